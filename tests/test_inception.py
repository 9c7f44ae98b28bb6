"""The FID Inception-v3 (architecture, TF pool patches, both weight formats) and FID preprocessing.

Weights are random values made here. The layer table below is written from the
Inception-v3 architecture independently of ``eval.inception``: it builds both the
pytorch-fid-layout state dict and an NVIDIA-style TorchScript module from the
same values, so loading either must give the same features.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from eval.fid_preprocess import MODES, FIDDetector, preprocess, quantize
from eval.inception import (DetectorHashError, InceptionV3, load_inception, parse_untrained, read_torchscript_tensors,
                            untrained_inception)
from trainer.networks.weights import PUBLIC, WeightsError


def _a(cin, pf):
    return [("branch1x1", "conv", cin, 64, 1, 1), ("branch5x5_1", "tower.conv", cin, 48, 1, 1),
            ("branch5x5_2", "tower.conv_1", 48, 64, 5, 5), ("branch3x3dbl_1", "tower_1.conv", cin, 64, 1, 1),
            ("branch3x3dbl_2", "tower_1.conv_1", 64, 96, 3, 3), ("branch3x3dbl_3", "tower_1.conv_2", 96, 96, 3, 3),
            ("branch_pool", "tower_2.conv", cin, pf, 1, 1)]


def _c(c):
    return [("branch1x1", "conv", 768, 192, 1, 1), ("branch7x7_1", "tower.conv", 768, c, 1, 1),
            ("branch7x7_2", "tower.conv_1", c, c, 1, 7), ("branch7x7_3", "tower.conv_2", c, 192, 7, 1),
            ("branch7x7dbl_1", "tower_1.conv", 768, c, 1, 1), ("branch7x7dbl_2", "tower_1.conv_1", c, c, 7, 1),
            ("branch7x7dbl_3", "tower_1.conv_2", c, c, 1, 7), ("branch7x7dbl_4", "tower_1.conv_3", c, c, 7, 1),
            ("branch7x7dbl_5", "tower_1.conv_4", c, 192, 1, 7), ("branch_pool", "tower_2.conv", 768, 192, 1, 1)]


def _e(cin):
    return [("branch1x1", "conv", cin, 320, 1, 1), ("branch3x3_1", "tower.conv", cin, 384, 1, 1),
            ("branch3x3_2a", "tower.mixed.conv", 384, 384, 1, 3),
            ("branch3x3_2b", "tower.mixed.conv_1", 384, 384, 3, 1),
            ("branch3x3dbl_1", "tower_1.conv", cin, 448, 1, 1), ("branch3x3dbl_2", "tower_1.conv_1", 448, 384, 3, 3),
            ("branch3x3dbl_3a", "tower_1.mixed.conv", 384, 384, 1, 3),
            ("branch3x3dbl_3b", "tower_1.mixed.conv_1", 384, 384, 3, 1),
            ("branch_pool", "tower_2.conv", cin, 192, 1, 1)]


_B = [("branch3x3", "conv", 288, 384, 3, 3), ("branch3x3dbl_1", "tower.conv", 288, 64, 1, 1),
      ("branch3x3dbl_2", "tower.conv_1", 64, 96, 3, 3), ("branch3x3dbl_3", "tower.conv_2", 96, 96, 3, 3)]
_D = [("branch3x3_1", "tower.conv", 768, 192, 1, 1), ("branch3x3_2", "tower.conv_1", 192, 320, 3, 3),
      ("branch7x7x3_1", "tower_1.conv", 768, 192, 1, 1), ("branch7x7x3_2", "tower_1.conv_1", 192, 192, 1, 7),
      ("branch7x7x3_3", "tower_1.conv_2", 192, 192, 7, 1), ("branch7x7x3_4", "tower_1.conv_3", 192, 192, 3, 3)]
_BLOCKS = [("Mixed_5b", "mixed", _a(192, 32)), ("Mixed_5c", "mixed_1", _a(256, 64)),
           ("Mixed_5d", "mixed_2", _a(288, 64)), ("Mixed_6a", "mixed_3", _B), ("Mixed_6b", "mixed_4", _c(128)),
           ("Mixed_6c", "mixed_5", _c(160)), ("Mixed_6d", "mixed_6", _c(160)), ("Mixed_6e", "mixed_7", _c(192)),
           ("Mixed_7a", "mixed_8", _D), ("Mixed_7b", "mixed_9", _e(1280)), ("Mixed_7c", "mixed_10", _e(2048))]
# (our BasicConv2d path, NVIDIA's conv layer path, cin, cout, kh, kw)
LAYERS = [("Conv2d_1a_3x3", "layers.conv", 3, 32, 3, 3), ("Conv2d_2a_3x3", "layers.conv_1", 32, 32, 3, 3),
          ("Conv2d_2b_3x3", "layers.conv_2", 32, 64, 3, 3), ("Conv2d_3b_1x1", "layers.conv_3", 64, 80, 1, 1),
          ("Conv2d_4a_3x3", "layers.conv_4", 80, 192, 3, 3)] + [
    (f"{ours}.{b}", f"layers.{theirs}.{t}", *shape) for ours, theirs, rows in _BLOCKS for b, t, *shape in rows]

FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
NV_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


def _random_values(seed: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    """NVIDIA-style values per conv layer: He-scaled weights keep activations O(1) through 94 layers."""
    g = torch.Generator().manual_seed(seed)
    vals = {}
    for _, nv, cin, cout, kh, kw in LAYERS:
        vals[nv] = {"weight": torch.randn(cout, cin, kh, kw, generator=g) * math.sqrt(2 / (cin * kh * kw)),
                    "beta": torch.randn(cout, generator=g) * 0.1, "mean": torch.randn(cout, generator=g) * 0.1,
                    "var": torch.rand(cout, generator=g) + 0.5}
    vals["output"] = {"weight": torch.randn(1008, 2048, generator=g) * 0.02, "bias": torch.randn(1008, generator=g)}
    return vals


def _fid_layout(vals) -> dict[str, torch.Tensor]:
    sd = {}
    for ours, nv, *_ in LAYERS:
        v = vals[nv]
        sd.update({f"{ours}.conv.weight": v["weight"], f"{ours}.bn.weight": torch.ones_like(v["beta"]),
                   f"{ours}.bn.bias": v["beta"], f"{ours}.bn.running_mean": v["mean"],
                   f"{ours}.bn.running_var": v["var"], f"{ours}.bn.num_batches_tracked": torch.tensor(0)})
    sd["fc.weight"], sd["fc.bias"] = vals["output"]["weight"], vals["output"]["bias"]
    return sd


class _Conv(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.weight, self.beta = nn.Parameter(v["weight"].clone()), nn.Parameter(v["beta"].clone())
        self.register_buffer("mean", v["mean"].clone())
        self.register_buffer("var", v["var"].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Node(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _save_nvidia(vals, path, flatten_e: bool = False, layers=LAYERS):
    """A scripted module tree with NVIDIA's names; ``flatten_e`` names the E towers tower_mixed_conv etc."""
    root = _Node()
    for _, nv, *_ in layers:
        parts = nv.split(".")
        if flatten_e and parts[1] in ("mixed_9", "mixed_10"):
            parts = parts[:2] + ["_".join(parts[2:])]
        node = root
        for p in parts[:-1]:
            if not hasattr(node, p):
                node.add_module(p, _Node())
            node = getattr(node, p)
        node.add_module(parts[-1], _Conv(vals[nv]))
    root.layers.add_module("pool0", nn.MaxPool2d(3, 2))
    root.output = nn.Linear(2048, 1008)
    root.output.weight.data.copy_(vals["output"]["weight"])
    root.output.bias.data.copy_(vals["output"]["bias"])
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def _images(h, w, seed=3):
    return torch.randint(0, 256, (2, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.fixture(scope="module")
def ref():
    vals = _random_values()
    net = InceptionV3().eval()
    net.load_state_dict(_fid_layout(vals), strict=True)
    images = _images(64, 48, seed=2)
    x = preprocess(images, "tf")
    with torch.no_grad():
        feats, logits = net(x, return_logits=True)
    return {"vals": vals, "net": net, "images": images, "x": x, "features": feats, "logits": logits}


def _features(net, x):
    with torch.no_grad():
        return net(x)


def _assert_same_weights(net, other):
    # Same class and same weights means same features, without another forward pass.
    mine, theirs = net.state_dict(), other.state_dict()
    assert mine.keys() == theirs.keys()
    for k, v in theirs.items():
        assert k.endswith("num_batches_tracked") or torch.equal(mine[k], v), k


def _named_by_hash(tmp_path, sd, stem="pt_inception-2015-12-05"):
    tmp = tmp_path / "tmp.pth"
    torch.save(sd, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp.rename(tmp_path / f"{stem}-{digest[:8]}.pth"), digest


def test_architecture_matches_the_layer_table(ref):
    net = ref["net"]
    expected = sum(co * ci * kh * kw + 2 * co for _, _, ci, co, kh, kw in LAYERS) + 2048 * 1008 + 1008
    # torchvision's Inception3 without AuxLogits has 23,834,568; 1008 classes add 8 x 2049.
    assert sum(p.numel() for p in net.parameters()) == expected == 23_850_960
    assert set(net.state_dict()) == set(_fid_layout(ref["vals"]))
    assert ref["features"].shape == (2, 2048) and ref["logits"].shape == (2, 1008)
    assert ref["features"].std() > 1e-2  # the random weights keep the signal alive
    torch.testing.assert_close(ref["logits"], ref["features"] @ ref["vals"]["output"]["weight"].T
                               + ref["vals"]["output"]["bias"])


def _bc(m, x):
    """BasicConv2d by hand: conv, then BN (eval, eps 0.001), then ReLU."""
    y = F.conv2d(x, m.conv.weight, stride=m.conv.stride, padding=m.conv.padding)
    s = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    return torch.relu((y - s(m.bn.running_mean)) / torch.sqrt(s(m.bn.running_var) + 1e-3) * s(m.bn.weight)
                      + s(m.bn.bias))


def test_inception_a_block_average_pool_excludes_padding(ref):
    blk = ref["net"].Mixed_5b
    x = torch.rand(2, 192, 5, 5) + 0.5
    out = _features(blk, x)

    def by_hand(include_pad):
        pool = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=include_pad)
        return torch.cat([_bc(blk.branch1x1, x), _bc(blk.branch5x5_2, _bc(blk.branch5x5_1, x)),
                          _bc(blk.branch3x3dbl_3, _bc(blk.branch3x3dbl_2, _bc(blk.branch3x3dbl_1, x))),
                          _bc(blk.branch_pool, pool)], 1)

    torch.testing.assert_close(out, by_hand(False), rtol=1e-5, atol=1e-5)
    with_pad = by_hand(True)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], with_pad[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
    assert (out[:, -32:, 0] - with_pad[:, -32:, 0]).abs().max() > 1e-2  # the border tells them apart


@pytest.mark.parametrize("block,pool", [("Mixed_6b", "avg"), ("Mixed_7b", "avg"), ("Mixed_7c", "max")])
def test_pool_branches_follow_the_tf_graph(ref, block, pool):
    blk = getattr(ref["net"], block)
    cin = blk.branch_pool.conv.in_channels
    x = torch.randn(2, cin, 4, 4) + 0.5
    out = _features(blk, x)[:, -192:]  # the pool branch is the last in the concat
    avg = _bc(blk.branch_pool, F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
    mx = _bc(blk.branch_pool, F.max_pool2d(x, 3, stride=1, padding=1))
    torch.testing.assert_close(out, avg if pool == "avg" else mx, rtol=1e-5, atol=1e-5)
    assert (out - (mx if pool == "avg" else avg)).abs().max() > 1e-2


def test_pytorch_fid_file_loads_and_checks_the_hash_in_its_name(ref, tmp_path):
    path, digest = _named_by_hash(tmp_path, _fid_layout(ref["vals"]))
    net, info = load_inception(path)
    assert info == {"format": "pytorch-fid", "sha256": digest, "path": str(path)} and not net.training
    torch.testing.assert_close(_features(net, ref["x"]), ref["features"], rtol=0, atol=0)
    # Files saved before torch 0.4.1 carry no num_batches_tracked: they load the same.
    sd = {k: v for k, v in _fid_layout(ref["vals"]).items() if not k.endswith("num_batches_tracked")}
    path, digest = _named_by_hash(tmp_path, sd)
    bad = path.rename(tmp_path / f"pt_inception-2015-12-05-{'0' if digest[0] != '0' else '1'}{digest[1:8]}.pth")
    with pytest.raises(WeightsError, match="SHA-256"):
        load_inception(bad)
    net, info = load_inception(bad, check_hash=False)  # the name's hash is the only thing wrong with it
    assert info["sha256"] == digest
    _assert_same_weights(net, ref["net"])


@pytest.mark.slow  # a full-size (95 MB) state dict written, hashed and read: about 10 s on 2 cores
def test_torch_fidelity_file_loads_like_pytorch_fids(ref, tmp_path):
    # torch-fidelity's converter (utils/util_convert_inception_weights.py) writes pytorch-fid's
    # keys from the TF graph, without BatchNorm's step counters.
    sd = {k: v for k, v in _fid_layout(ref["vals"]).items() if not k.endswith("num_batches_tracked")}
    path, digest = _named_by_hash(tmp_path, sd, stem="weights-inception-2015-12-05")
    net, info = load_inception(path)
    assert info == {"format": "pytorch-fid", "sha256": digest, "path": str(path)}
    _assert_same_weights(net, ref["net"])
    bad = path.rename(tmp_path / f"weights-inception-2015-12-05-{'0' if digest[0] != '0' else '1'}{digest[1:8]}.pth")
    with pytest.raises(DetectorHashError, match="SHA-256") as e:
        load_inception(bad)
    assert e.value.sha256 == digest


def test_damaged_or_missing_files_raise_weights_error(tmp_path):
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.randn(32, 3, 3, 3)}, tmp_path / "small.pth")
    data = (tmp_path / "small.pth").read_bytes()
    for name, content in (("cut.pth", data[: len(data) // 2]), ("empty.pth", b""), ("text.pth", b"not weights")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WeightsError):
            load_inception(tmp_path / name)
    with pytest.raises(WeightsError, match="missing"):  # the right layout, but only one tensor
        load_inception(tmp_path / "small.pth")
    torch.save({"some.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="neither"):
        load_inception(tmp_path / "other.pth")
    for missing in (None, tmp_path / "nowhere.pth"):
        with pytest.raises(WeightsError) as e:
            load_inception(missing)
        msg = str(e.value)
        assert PUBLIC["inception_fid"].filename in msg and FID_URL in msg and NV_URL in msg
        assert PUBLIC["inception_fidelity"].filename in msg and PUBLIC["inception_fidelity"].source in msg
    assert PUBLIC["inception_nvidia"].source == NV_URL and PUBLIC["inception_fid"].source == FID_URL


@pytest.fixture(scope="module")
def nvidia_file(ref, tmp_path_factory):
    return _save_nvidia(ref["vals"], tmp_path_factory.mktemp("nv") / "inception-2015-12-05.pt")


def test_nvidia_torchscript_gives_the_same_features(ref, nvidia_file, tmp_path, monkeypatch):
    def no_jit(*args, **kwargs):
        raise AssertionError("the TorchScript archive must be read as data, not loaded as code")

    monkeypatch.setattr(torch.jit, "load", no_jit)
    digest = hashlib.sha256(nvidia_file.read_bytes()).hexdigest()
    net, info = load_inception(nvidia_file, expected_sha256=digest)
    assert info == {"format": "nvidia", "sha256": digest, "path": str(nvidia_file)} and not net.training
    feats, logits = _features(lambda x: net(x, return_logits=True), ref["x"])
    torch.testing.assert_close(feats, ref["features"], rtol=0, atol=0)
    torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=0)
    with pytest.raises(WeightsError, match="SHA-256"):
        load_inception(nvidia_file, expected_sha256="0" * 64)
    data = nvidia_file.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="truncated"):
        load_inception(tmp_path / "cut.pt")


def test_nvidia_torchscript_with_flattened_tower_names(ref, tmp_path):
    path = _save_nvidia(ref["vals"], tmp_path / "inception-2015-12-05.pt", flatten_e=True)
    assert "layers.mixed_9.tower_mixed_conv.weight" in read_torchscript_tensors(path)
    net, info = load_inception(path)
    assert info["format"] == "nvidia"
    _assert_same_weights(net, ref["net"])


def test_nvidia_file_with_missing_or_misshaped_layers_is_refused(ref, tmp_path):
    vals = dict(ref["vals"], **{"layers.conv_1": {**ref["vals"]["layers.conv_1"], "beta": torch.zeros(7)}})
    path = _save_nvidia(vals, tmp_path / "inception-2015-12-05.pt", layers=LAYERS[:2])
    with pytest.raises(WeightsError) as e:
        load_inception(path)
    msg = str(e.value)
    assert "(369 problems)" in msg and "missing layers.conv_2.weight" in msg
    assert "layers.conv_1.beta: file (7,) vs expected (32,)" in msg


def _zip(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_torchscript_reader_refuses_code_it_is_not_allowed_to_run(tmp_path):
    marker = tmp_path / "ran"
    cmd = f"touch {marker}".encode()
    # protocol 2: GLOBAL os.system, BINUNICODE cmd, TUPLE1, REDUCE, STOP
    evil = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."
    path = _zip(tmp_path / "evil.pt", {"evil/data.pkl": evil, "evil/code/__torch__.py": b"", "evil/version": b"3\n"})
    with pytest.raises(WeightsError, match="os.system"):
        load_inception(path)
    assert not marker.exists()
    builtin = pickle.dumps(getattr, protocol=4)  # a builtins global in a __torch__-looking archive
    path = _zip(tmp_path / "b.pt", {"b/data.pkl": builtin, "b/constants.pkl": b"", "b/version": b"3\n"})
    with pytest.raises(WeightsError, match="builtins.getattr"):
        load_inception(path)
    path = _zip(tmp_path / "junk.pt", {"j/data.pkl": b"\x80\x02garbage", "j/code/x.py": b""})
    with pytest.raises(WeightsError, match="corrupt"):
        load_inception(path)


# ---- preprocessing, each mode against an independent computation ----

def _tf_ref(img: np.ndarray, rows, cols, out=299) -> np.ndarray:
    """TF1 legacy bilinear (align_corners=False, half_pixel_centers=False) at the given output pixels."""
    n, c, h, w = img.shape
    res = np.zeros((n, c, len(rows), len(cols)))
    for a, i in enumerate(rows):
        y = i * (h / out)
        y0, y1 = math.floor(y), min(math.ceil(y), h - 1)
        for b, j in enumerate(cols):
            x = j * (w / out)
            x0, x1 = math.floor(x), min(math.ceil(x), w - 1)
            top = img[:, :, y0, x0] + (img[:, :, y0, x1] - img[:, :, y0, x0]) * (x - x0)
            bottom = img[:, :, y1, x0] + (img[:, :, y1, x1] - img[:, :, y1, x0]) * (x - x0)
            res[:, :, a, b] = top + (bottom - top) * (y - y0)
    return (res - 128) / 128


@pytest.mark.parametrize("hw", [(37, 53), (410, 333), (299, 150)])
def test_tf_mode_is_tf1_legacy_bilinear(hw):
    imgs = _images(*hw)
    out = preprocess(imgs, "tf")
    assert out.dtype == torch.float32 and out.shape == (2, 3, 299, 299)
    idx = sorted(set(range(0, 299, 7)) | {1, 297, 298})
    want = _tf_ref(imgs.double().numpy(), idx, idx)
    got = out[:, :, idx][:, :, :, idx].double().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_tf_mode_passes_299_through():
    imgs = _images(299, 299)
    assert torch.equal(preprocess(imgs, "tf"), (imgs.float() - 128) / 128)


@pytest.mark.parametrize("hw", [(37, 53), (410, 333)])
def test_clean_mode_is_pil_bicubic_on_float_channels(hw):
    imgs = _images(*hw)
    out = preprocess(imgs, "clean")
    want = np.stack([np.stack([np.asarray(Image.fromarray(ch.astype(np.float32), mode="F")
                                          .resize((299, 299), Image.Resampling.BICUBIC)).clip(0, 255)
                               for ch in im]) for im in imgs.numpy()])
    assert out.dtype == torch.float32 and out.shape == (2, 3, 299, 299)
    np.testing.assert_allclose(out.numpy(), (want - 128) / 128, rtol=0, atol=1e-6)


def _half_pixel_bilinear_1d(a: np.ndarray, axis: int, out: int) -> np.ndarray:
    size = a.shape[axis]
    src = np.maximum((np.arange(out) + 0.5) * (size / out) - 0.5, 0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, size - 1)
    frac = (src - i0).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
    return np.take(a, i0, axis) * (1 - frac) + np.take(a, i1, axis) * frac


@pytest.mark.parametrize("hw", [(37, 53), (410, 333), (299, 299)])
def test_torch_bilinear_mode_is_half_pixel_bilinear(hw):
    imgs = _images(*hw)
    want = _half_pixel_bilinear_1d(_half_pixel_bilinear_1d(imgs.double().numpy() / 255, 2, 299), 3, 299)
    out = preprocess(imgs, "torch-bilinear")
    assert out.dtype == torch.float32 and out.shape == (2, 3, 299, 299)
    # torch computes source coordinates in float32 (errors ~1e-5 px at 400 px); a wrong
    # convention (align_corners, no half-pixel offset) would be off by 0.1 and more.
    np.testing.assert_allclose(out.numpy(), 2 * want - 1, rtol=0, atol=2e-4)


def test_preprocess_and_quantize_reject_wrong_inputs():
    with pytest.raises(TypeError, match="uint8"):
        preprocess(torch.rand(1, 3, 8, 8), "tf")
    with pytest.raises(TypeError, match="uint8"):
        preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.int32), "clean")
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        preprocess(torch.zeros(3, 8, 8, dtype=torch.uint8), "tf")
    with pytest.raises(ValueError, match="mode"):
        preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "bicubic")
    with pytest.raises(TypeError):
        quantize(torch.zeros(2, dtype=torch.uint8))
    assert MODES == ("tf", "clean", "torch-bilinear")


def test_quantize_truncates_like_nvidia():
    x = torch.tensor([-1.0, 1.0, 0.0, -2.0, 2.0, 0.5, 0.999, -0.9999, 0.0039])
    q = quantize(x)
    assert q.dtype == torch.uint8
    assert q.tolist() == [0, 255, 128, 0, 255, 191, 255, 0, 128]


def test_fid_detector_runs_in_float32_without_tf32_and_restores_the_flags(ref):
    seen = {}

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            seen.update(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32,
                        grad=torch.is_grad_enabled(), dtype=x.dtype, shape=tuple(x.shape))
            if x.shape[0] == 1:
                raise RuntimeError("probe failure")
            return x.mean((2, 3)).repeat(1, 683)[:, :2048] * self.w

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        det = FIDDetector(Probe(), "clean")
        assert det(_images(20, 24)).shape == (2, 2048)
        assert seen == {"matmul": False, "cudnn": False, "grad": False, "dtype": torch.float32,
                        "shape": (2, 3, 299, 299)}
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(RuntimeError, match="probe"):
            det(_images(20, 24)[:1])
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(ValueError):
            FIDDetector(Probe(), "nearest")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    det = FIDDetector(ref["net"], "tf").train()
    assert not det.network.training
    torch.testing.assert_close(det(ref["images"]), ref["features"], rtol=0, atol=0)


# ----------------------------------------------------------------------------
# The untrained stand-in detector.

def test_untrained_detector_is_seeded_and_named_as_untrained(untrained_detector):
    # untrained_detector: the suite's shared seed-0 build (conftest.py); the others are built here.
    (a, info), (b, _), (c, _) = untrained_detector(0), untrained_inception(0), untrained_inception(1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and a.unit_rms and b.unit_rms
    assert not torch.equal(sa["Conv2d_1a_3x3.conv.weight"], sc["Conv2d_1a_3x3.conv.weight"])
    assert info["sha256"].startswith("untrained-seed0-torch") and info["format"] == "untrained"
    assert not a.training


def test_untrained_features_have_unit_rms_and_separate_distributions(untrained_detector):
    net, _ = untrained_detector(0)
    det = FIDDetector(net, "tf").eval()
    g = torch.Generator().manual_seed(0)
    noise = lambda n: torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    def smooth(n):  # a different distribution: flat colours
        return (torch.rand(n, 3, 1, 1, generator=g) * 255).to(torch.uint8).expand(n, 3, 32, 32)
    with torch.no_grad():
        a, b, c = det(noise(6)).double(), det(noise(6)).double(), det(smooth(6)).double()
    assert torch.allclose(a.square().mean(1), torch.ones(6, dtype=torch.float64), atol=1e-4)  # unit RMS per image
    assert float(a.std(0).mean()) > 1e-3  # not collapsed: images map to different features
    same, other = float((a.mean(0) - b.mean(0)).norm()), float((a.mean(0) - c.mean(0)).norm())
    assert other > 3 * same, (same, other)


@pytest.mark.parametrize("spec, seed", [("untrained", 0), ("untrained:7", 7), ("weights/x.pth", None), (None, None)])
def test_untrained_spec_parsing(spec, seed):
    assert parse_untrained(spec) == seed


def test_untrained_spec_with_a_bad_seed_is_refused():
    with pytest.raises(WeightsError, match="untrained:<integer seed>"):
        parse_untrained("untrained:abc")
