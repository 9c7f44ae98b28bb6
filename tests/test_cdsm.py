"""CDSM: which styles come from which latent, G_swap, fixed-noise decoding, look-up tables, projection."""

from __future__ import annotations

import pytest
import torch

from eval.cdsm import (CharacterEntry, LookUpTable, MixConfig, TableMismatch, average_latent, cartoonize, fixed_noise,
                        generator_fingerprint, mix_styles, photo_mask, sample_references, toonify, wplus_mix)
from eval.projection import ProjectionConfig, project
from trainer.networks import Generator, GeneratorConfig, style_layers, synthesize, ws_to_styles
from trainer.networks.swap import g_swap, param_resolution

TINY = dict(style_dim=32, n_mlp=2, channel_multiplier=1 / 128, channel_max=8)


def tiny_g(size: int = 32, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(size=size, **TINY))
    with torch.no_grad():
        # Fresh noise strengths are 0: give noise a visible effect so the seed matters.
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.3)
    G.update_w_avg(512)
    return G.eval()


@pytest.fixture(scope="module")
def pair() -> tuple[Generator, Generator]:
    source, target = tiny_g(seed=0), tiny_g(seed=1)
    with torch.no_grad():
        # Shift every entry so no layer can match both parents by chance (biases start equal).
        target.load_state_dict({k: v + 0.01 * (1 + torch.rand_like(v)) for k, v in target.state_dict().items()})
    return source, target


@pytest.fixture(scope="module")
def G(pair) -> Generator:
    return g_swap(*pair, resolution=16)


def ws(G: Generator, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return G.mapping(torch.randn(n * G.n_latent, G.style_dim, generator=gen)).view(n, G.n_latent, -1)


def changed_layers(a: list[torch.Tensor], b: list[torch.Tensor]) -> set[int]:
    return {i for i, (x, y) in enumerate(zip(a, b)) if not torch.equal(x, y)}


# ----------------------------------------------------------------------
# Which styles come from which latent.

@pytest.mark.parametrize("trgb", [True, False])
@pytest.mark.parametrize("m", [0, 3, 6, 8])
def test_each_w_index_drives_exactly_its_traced_layers(G, trgb, m):
    cfg = MixConfig(m=m, trgb_from_character=trgb)
    layers = style_layers(G)
    w_photo, w_char = ws(G, 2, 1), ws(G, 1, 2)
    base = mix_styles(G, w_photo, w_char, cfg)
    for j in range(G.n_latent):
        bumped = w_char.clone()
        bumped[:, j] += 1.0
        expect = {s.index for s in layers if s.w_index == j and (s.w_index >= m or (trgb and s.kind == "trgb"))}
        assert changed_layers(base, mix_styles(G, w_photo, bumped, cfg)) == expect, (j, m, trgb)

        bumped = w_photo.clone()
        bumped[:, j] += 1.0
        expect = {s.index for s in layers if s.w_index == j and s.w_index < m and not (trgb and s.kind == "trgb")}
        got = changed_layers(base, mix_styles(G, bumped, w_char, cfg))
        assert got == expect, (j, m, trgb)
        if trgb:
            assert all(layers[i].kind == "conv" for i in got)  # tRGB styles never follow the photo


def test_photo_mask_at_1024_is_read_off_the_trace():
    big = Generator(size=1024, style_dim=8, n_mlp=1, channel_multiplier=1 / 64, channel_max=8)
    layers = style_layers(big)
    kinds = [s.kind for s in layers]
    assert len(layers) == 26 and kinds.count("conv") == 17 and kinds.count("trgb") == 9
    mask = photo_mask(big, MixConfig(m=6))
    conv_w = [s.w_index for s in layers if s.kind == "conv"]
    assert sum(mask) == sum(w < 6 for w in conv_w)
    assert [s.w_index for s, p in zip(layers, mask) if p] == [w for w in conv_w if w < 6]
    assert not any(p for s, p in zip(layers, mask) if s.kind == "trgb")
    # The rosinality wiring: conv1 w0, then two convs per block on w1..w16: w0..w5 are below 6.
    assert sum(mask) == 6 and conv_w == [0] + list(range(1, 17))
    loose = photo_mask(big, MixConfig(m=6, trgb_from_character=False))
    assert [s.w_index for s, p in zip(layers, loose) if p and s.kind == "trgb"] == [1, 3, 5]
    with pytest.raises(ValueError, match="m must be in"):
        photo_mask(big, MixConfig(m=19))
    with pytest.raises(ValueError):
        MixConfig(m=-1)


# ----------------------------------------------------------------------
# G_swap.

@pytest.mark.parametrize("res", [8, 16, 32])
def test_g_swap_takes_each_entry_from_the_right_parent(pair, res):
    source, target = pair
    swapped = g_swap(source, target, res)
    assert not swapped.training and not any(p.requires_grad for p in swapped.parameters())
    src, tgt = source.state_dict(), target.state_dict()
    for name, value in swapped.state_dict().items():
        r = param_resolution(swapped, name)
        parent, other = (src, tgt) if r is None or r < res else (tgt, src)
        assert torch.equal(value, parent[name]), name
        assert not torch.equal(value, other[name]), name
    assert torch.equal(swapped.w_avg, source.w_avg)


# ----------------------------------------------------------------------
# Decoding.

def test_cartoonize_is_deterministic_and_depends_on_the_noise_seed(G):
    w_photo, w_char = ws(G, 2, 3), ws(G, 1, 4)
    a = cartoonize(G, w_photo, w_char, MixConfig(m=3))
    b = cartoonize(G, w_photo, w_char, MixConfig(m=3))
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    assert not torch.allclose(a, cartoonize(G, w_photo, w_char, MixConfig(m=3, noise_seed=1)))
    noise = fixed_noise(G, 5, batch=3)
    assert [tuple(x.shape) for x in noise] == [(3, *x.shape[1:]) for x in G.make_noise(1, "const", "cpu")]
    assert all(torch.equal(x[0], x[2]) for x in noise)
    assert all(torch.equal(x, y) for x, y in zip(noise, fixed_noise(G, 5, batch=3)))


def test_cartoonize_with_m_0_is_the_character_and_baselines_decode_directly(G):
    w_photo, w_char = ws(G, 2, 5), ws(G, 1, 6)
    noise = fixed_noise(G, 0, 2)
    all_char = synthesize(G, ws_to_styles(G, w_char.expand(2, -1, -1)), noise=noise)
    torch.testing.assert_close(cartoonize(G, w_photo, w_char, MixConfig(m=0)), all_char, rtol=0, atol=1e-5)
    # A table entry [L, D] is accepted as the character latent.
    torch.testing.assert_close(cartoonize(G, w_photo, w_char[0], MixConfig(m=0)), all_char, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(toonify(G, w_photo, MixConfig()), G.synthesis(w_photo, noise=noise).img)
    # Without tRGB replacement the StyleSpace mix is exactly W+ mixing at m.
    cfg = MixConfig(m=3, trgb_from_character=False)
    torch.testing.assert_close(cartoonize(G, w_photo, w_char, cfg), wplus_mix(G, w_photo, w_char, cfg),
                               rtol=0, atol=1e-5)
    assert not torch.allclose(cartoonize(G, w_photo, w_char, MixConfig(m=3)), wplus_mix(G, w_photo, w_char, cfg))


# ----------------------------------------------------------------------
# The look-up table.

def test_sample_references_is_seeded_and_without_repeats():
    names = [f"img{i:03d}.png" for i in range(200)]
    a = sample_references(names[::-1], 50, seed=0)
    assert a == sample_references(names, 50, seed=0)  # depends on the set, not the order given
    assert len(a) == 50 == len(set(a)) and set(a) <= set(names)
    assert a != sample_references(names, 50, seed=1)
    assert sample_references(names[:7] + names[:3], 50, seed=0) == names[:7]  # fewer than k: all, once


def table_with(G: Generator, tmp_path) -> tuple[LookUpTable, str]:
    table = LookUpTable(generator_fingerprint(G), {"swap_resolution": 16, "seed": 0, "k": 3, "method": "encoder"})
    table.add(CharacterEntry("bob", ws(G, 1, 7)[0], ["a.png", "b.png", "c.png"], 3, "encoder"))
    table.add(CharacterEntry("amy", ws(G, 1, 8)[0], ["d.png"], 3, "projection"))
    path = str(tmp_path / "lut.pt")
    table.save(path)
    return table, path


def test_table_round_trip_is_exact(G, tmp_path):
    table, path = table_with(G, tmp_path)
    loaded = LookUpTable.load(path, expect_fingerprint=generator_fingerprint(G))
    assert loaded.names() == ["amy", "bob"] and loaded.meta == table.meta
    for name in table.names():
        a, b = table.get(name), loaded.get(name)
        assert torch.equal(a.latent, b.latent) and (a.images, a.k, a.method) == (b.images, b.k, b.method)
    assert not loaded.get("amy").complete and loaded.get("bob").complete
    assert [p.name for p in tmp_path.iterdir()] == ["lut.pt"]  # no temporary file left behind


def test_table_refuses_other_generators_unknown_names_and_broken_files(G, pair, tmp_path):
    _, path = table_with(G, tmp_path)
    other = generator_fingerprint(pair[0])
    assert other != generator_fingerprint(G)
    with pytest.raises(TableMismatch, match="another generator") as err:
        LookUpTable.load(path, expect_fingerprint=other)
    assert other in str(err.value) and generator_fingerprint(G) in str(err.value)
    with pytest.raises(KeyError, match="amy, bob"):
        LookUpTable.load(path).get("carl")
    data = open(path, "rb").read()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable look-up table"):
        LookUpTable.load(cut)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a CDSM look-up table"):
        LookUpTable.load(tmp_path / "other.pt")


def test_average_latent_is_the_mean():
    lat = torch.randn(5, 4, 3)
    by_hand = (lat[0] + lat[1] + lat[2] + lat[3] + lat[4]) / 5
    torch.testing.assert_close(average_latent(lat), by_hand, rtol=0, atol=1e-5)
    assert average_latent(lat).dtype == lat.dtype


# ----------------------------------------------------------------------
# Projection.

def test_projection_recovers_a_generated_image_and_leaves_the_generator_alone():
    G = tiny_g(16, seed=3).requires_grad_(True)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    w_true = G.w_avg.lerp(ws(G, 1, 9), 0.7)
    with torch.no_grad():
        target = G.synthesis(w_true, noise_mode="const").img
    # The noise penalty is sized for 1024 px, where most maps are large; on a 16 px
    # generator it would dominate the objective, so the convergence check runs without it.
    cfg = ProjectionConfig(steps=100, lpips=0.0, noise_regularize=0.0, w_avg_samples=1000, seed=0)
    seen: list[int] = []
    out = project(G, target, None, cfg, progress=lambda step, loss: seen.append(step))
    assert out.latents.shape == (1, G.n_latent, G.style_dim) and out.images.shape == target.shape
    assert seen == list(range(100)) and len(out.losses) == 100 and not out.latents.requires_grad
    with torch.no_grad():
        start = G.synthesis(G.w_avg[None, None].expand(1, G.n_latent, -1), noise_mode="const").img
    start_l2, end_l2 = (start - target).square().mean(), (out.images - target).square().mean()
    assert end_l2 < 0.1 * start_l2 and out.losses[-1] < 0.5 * out.losses[0]
    for v in out.noise:  # kept normalised after every step
        torch.testing.assert_close(v.mean(), torch.tensor(0.0), rtol=0, atol=1e-5)
        torch.testing.assert_close(v.square().mean(), torch.tensor(1.0), rtol=0, atol=1e-4)
    assert all(p.requires_grad and p.grad is None for p in G.parameters())
    assert all(torch.equal(v, before[k]) for k, v in G.state_dict().items())


def test_projection_is_deterministic_for_a_seed():
    G = tiny_g(16, seed=3)
    with torch.no_grad():
        target = G.synthesis(ws(G, 1, 11), noise_mode="const").img
    cfg = ProjectionConfig(steps=15, lpips=0.0, w_avg_samples=500, seed=2)
    a, b = project(G, target, None, cfg), project(G, target, None, cfg)
    assert torch.equal(a.latents, b.latents) and a.losses == b.losses
    assert all(torch.equal(x, y) for x, y in zip(a.noise, b.noise))
    c = project(G, target, None, ProjectionConfig(steps=15, lpips=0.0, w_avg_samples=500, seed=3))
    assert not torch.equal(a.latents, c.latents)


def test_projection_compares_at_the_image_size_and_checks_shapes():
    G = tiny_g(32, seed=4)
    with torch.no_grad():
        target = torch.nn.functional.avg_pool2d(G.synthesis(ws(G, 2, 10), noise_mode="const").img, 2)
    out = project(G, target, None, ProjectionConfig(steps=5, space="w", w_avg_samples=100))
    assert out.images.shape == (2, 3, 16, 16) and torch.equal(out.latents[:, 0], out.latents[:, -1])
    with pytest.raises(ValueError, match="square"):
        project(G, torch.zeros(1, 3, 16, 8), None, ProjectionConfig(steps=1))
    with pytest.raises(ValueError, match="larger"):
        project(G, torch.zeros(1, 3, 64, 64), None, ProjectionConfig(steps=1))
