"""Pretrained-weight loading, IR-SE / ResNet layouts, LPIPS, MoCo and identity features.

No public weight file is needed: the tests write files in the public layouts
with random weights and check the numbers against plain-torch re-computations.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer.networks import irse, resnet
from trainer.networks.face_id import FaceID
from trainer.networks.lpips import LPIPS, normalize_channels
from trainer.networks.moco import MocoFeatures
from trainer.networks.similarity import similarity_loss
from trainer.networks.weights import PUBLIC, WeightsError, load_into, load_weights, verify


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_hashed(obj: object, folder: Path, stem: str) -> Path:
    """Saves ``obj`` under a torchvision-style name carrying its own hash prefix."""
    tmp = folder / f"{stem}.tmp"
    torch.save(obj, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp.rename(folder / f"{stem}-{digest[:8]}.pth")


def randomize_bn(module: torch.nn.Module) -> None:
    """Non-trivial running statistics, so a loader that skipped them would show."""
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)


# ---------------------------------------------------------------- weight files

def test_missing_file_names_the_file_and_its_source(tmp_path):
    with pytest.raises(WeightsError, match="alexnet-owt-7be5be79.pth") as e:
        load_weights(tmp_path / "nope.pth", "alexnet", "LPIPS")
    assert "download.pytorch.org" in str(e.value) and "does not exist" in str(e.value)
    with pytest.raises(WeightsError, match="model_ir_se50.pth.*no path given"):
        load_weights(None, "ir_se50", "the identity loss")


def test_torchvision_name_hash_is_checked(tmp_path):
    good = save_hashed({"w": torch.ones(3)}, tmp_path, "foo")
    assert torch.equal(load_weights(good, "resnet34", "test")["w"], torch.ones(3))
    wrong = tmp_path / "foo-00000000.pth"
    wrong.write_bytes(good.read_bytes())
    with pytest.raises(WeightsError, match="does not match"):
        load_weights(wrong, "resnet34", "test")
    assert load_weights(wrong, "resnet34", "test", check_hash=False)["w"].shape == (3,)


def test_expected_sha256_and_truncated_files(tmp_path):
    path = tmp_path / "alex.pth"
    torch.save({"lin0.model.1.weight": torch.ones(1, 4, 1, 1)}, path)
    digest = verify(path)
    assert load_weights(path, "lpips_alex", "LPIPS", expected_sha256=digest)
    with pytest.raises(WeightsError, match="does not match"):
        load_weights(path, "lpips_alex", "LPIPS", expected_sha256="ab" * 32)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_weights(cut, "lpips_alex", "LPIPS")


def test_load_into_reports_every_kind_of_mismatch(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    sd = {k: v.clone() for k, v in net.state_dict().items() if "num_batches_tracked" not in k}
    load_into(net, sd, "net", "f.pth")  # files from before torch 0.4.1 have no counters
    with pytest.raises(WeightsError, match=r"missing \['0.bias'\]"):
        load_into(net, {k: v for k, v in sd.items() if k != "0.bias"}, "net", "f.pth")
    with pytest.raises(WeightsError, match="unexpected.*extra"):
        load_into(net, {**sd, "extra": torch.ones(1)}, "net", "f.pth")
    load_into(net, {**sd, "extra": torch.ones(1)}, "net", "f.pth", allow_unexpected=("extra",))
    with pytest.raises(WeightsError, match="shapes.*0.weight"):
        load_into(net, {**sd, "0.weight": torch.ones(2, 2)}, "net", "f.pth")
    assert set(PUBLIC) >= {"ir_se50", "resnet34", "resnet50", "alexnet", "vgg16", "lpips_alex", "lpips_vgg", "moco_v2"}


# ---------------------------------------------------------------- IR-SE50 (ArcFace)

@pytest.fixture(scope="module")
def ir_se50_file(tmp_path_factory) -> tuple[irse.IRSEBackbone, Path]:
    torch.manual_seed(1)
    net = irse.IRSEBackbone().eval()
    randomize_bn(net)
    path = tmp_path_factory.mktemp("irse") / "model_ir_se50.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_ir_se50_public_layout(ir_se50_file):
    net, _ = ir_se50_file
    keys = set(net.state_dict())
    assert {"input_layer.0.weight", "input_layer.2.weight", "body.3.shortcut_layer.0.weight",
            "body.3.shortcut_layer.1.running_var", "body.0.res_layer.5.fc1.weight", "body.23.res_layer.5.fc2.weight",
            "output_layer.3.weight", "output_layer.4.running_mean"} <= keys
    # Units whose width does not change use a max-pool shortcut: no keys.
    assert not any(k.startswith(("body.0.shortcut_layer.", "body.1.shortcut_layer.")) for k in keys)
    assert "body.24.res_layer.1.weight" not in keys  # 3 + 4 + 14 + 3 units
    assert net.state_dict()["output_layer.3.weight"].shape == (512, 512 * 7 * 7)


def test_face_id_loads_the_public_layout(ir_se50_file):
    net, path = ir_se50_file
    fid = FaceID.from_file(path, check_hash=False)
    assert irse.arch_from_state(net.state_dict()) == {"units": (3, 4, 14, 3), "width": 1.0, "embedding": 512,
                                                      "input_size": 112}
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        ref = net(F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], 112))
        got = fid(x)
    assert got.shape == (2, 512)
    assert torch.allclose(got.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(got, ref, atol=1e-6)


def test_ir_se_arch_inference_on_a_narrow_variant():
    net = irse.IRSEBackbone(units=(1, 1, 1, 1), width=0.125, embedding=32)
    arch = irse.arch_from_state(net.state_dict())
    assert arch == {"units": (1, 1, 1, 1), "width": 0.125, "embedding": 32, "input_size": 112}
    body_only = {k: v for k, v in net.state_dict().items() if not k.startswith("output_layer.")}
    assert irse.arch_from_state(body_only) == {"units": (1, 1, 1, 1), "width": 0.125}


# ---------------------------------------------------------------- identity features

@pytest.fixture()
def narrow_face_id(tmp_path) -> tuple[irse.IRSEBackbone, FaceID]:
    net = irse.IRSEBackbone(units=(1, 2, 1, 1), width=0.125, embedding=16).eval()
    randomize_bn(net)
    path = tmp_path / "model_ir_se50.pth"
    torch.save(net.state_dict(), path)
    return net, FaceID.from_file(path, check_hash=False)


def test_face_id_crops_and_pools_like_restyle(narrow_face_id):
    net, fid = narrow_face_id
    x = torch.rand(2, 3, 512, 512) * 2 - 1
    at256 = F.adaptive_avg_pool2d(x, (256, 256))
    with torch.no_grad():
        ref = net(F.adaptive_avg_pool2d(at256[:, :, 35:223, 32:220], (112, 112)))
        got = fid(x)
        assert torch.allclose(fid(at256), ref, atol=1e-6)
    assert got.shape == (2, 16)
    assert torch.allclose(got, ref, atol=1e-6)


def test_face_id_loss_frozen_and_in_eval(narrow_face_id):
    _, fid = narrow_face_id
    fid.train()
    assert not any(m.training for m in fid.modules())
    assert not any(p.requires_grad for p in fid.parameters())
    y = torch.rand(2, 3, 256, 256) * 2 - 1
    loss, sim = similarity_loss(fid, y.clone(), y)
    assert loss.abs() < 1e-5 and torch.allclose(sim, torch.ones(2), atol=1e-5)
    y_hat = (torch.rand(2, 3, 256, 256) * 2 - 1).requires_grad_()
    loss, sim = similarity_loss(fid, y_hat, y)
    assert loss > 0 and not sim.requires_grad
    loss.backward()
    assert y_hat.grad is not None and y_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in fid.parameters())


def test_face_id_rejects_a_body_without_output_layer(tmp_path):
    net = irse.IRSEBackbone(units=(1, 1, 1, 1), width=0.125, embedding=8)
    path = tmp_path / "body.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("output_layer.")}, path)
    with pytest.raises(WeightsError, match="output_layer"):
        FaceID.from_file(path, check_hash=False)


# ---------------------------------------------------------------- torchvision ResNets

def test_resnets_have_torchvision_keys_and_sizes():
    r34, r50 = resnet.ResNet(34), resnet.ResNet(50)
    # torchvision's published parameter counts (ImageNet, 1000 classes).
    assert n_params(r34) == 21_797_672 and n_params(r50) == 25_557_032
    k34, k50 = set(r34.state_dict()), set(r50.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer3.5.bn2.weight", "layer4.2.conv2.weight", "fc.weight", "fc.bias"} <= k34
    assert "layer1.0.downsample.0.weight" not in k34 and "layer1.0.conv3.weight" not in k34
    assert {"layer1.0.downsample.0.weight", "layer1.0.conv3.weight", "layer2.0.downsample.1.running_var",
            "layer4.2.bn3.running_var", "fc.weight"} <= k50
    assert r50.state_dict()["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride on the 3x3
    assert resnet.arch_from_state(r34.state_dict()) == {"depth": 34, "width": 1.0}
    assert resnet.arch_from_state(r50.state_dict()) == {"depth": 50, "width": 1.0}
    narrow = resnet.ResNet(50, width=0.25)
    assert resnet.arch_from_state(narrow.state_dict()) == {"depth": 50, "width": 0.25}
    assert narrow.embed(torch.randn(1, 3, 64, 64)).shape == (1, 512)


# ---------------------------------------------------------------- LPIPS

ALEX_CONVS = {0: (4, 2), 3: (1, 2), 6: (1, 1), 8: (1, 1), 10: (1, 1)}  # index: (stride, padding)


def reference_lpips(features: dict[str, torch.Tensor], lins: list[torch.Tensor], net: str,
                    x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS from the saved tensors with functional ops: alex taps every ReLU,
    VGG16 the last ReLU before each max-pool."""
    def taps(h: torch.Tensor) -> list[torch.Tensor]:
        h = (h - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor(
            [0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        out = []
        if net == "alex":
            for i, (stride, pad) in ALEX_CONVS.items():
                if i in (3, 6):
                    h = F.max_pool2d(h, 3, 2)
                h = F.relu(F.conv2d(h, features[f"features.{i}.weight"], features[f"features.{i}.bias"], stride, pad))
                out.append(h)
            return out
        convs = sorted(int(k.split(".")[1]) for k in features if k.endswith(".weight"))
        for j, i in enumerate(convs):
            h = F.relu(F.conv2d(h, features[f"features.{i}.weight"], features[f"features.{i}.bias"], 1, 1))
            if j + 1 == len(convs) or convs[j + 1] != i + 2:  # a max-pool follows
                out.append(h)
                h = F.max_pool2d(h, 2, 2)
        return out

    total = torch.zeros(x.shape[0])
    for a, b, w in zip(taps(x), taps(y), lins):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += ((a - b) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean(dim=(1, 2))
    return total


def lpips_files(folder: Path, net: str) -> tuple[Path, Path, dict, list[torch.Tensor]]:
    """A torchvision-layout backbone (with a classifier) and a package-layout lin file."""
    src = LPIPS(net)
    feats = {k: v.clone() for k, v in src.net.state_dict().items()}
    channels = (64, 192, 384, 256, 256) if net == "alex" else (64, 128, 256, 512, 512)
    lins = [torch.rand(1, c, 1, 1) / c for c in channels]
    stem = "alexnet-owt" if net == "alex" else "vgg16"
    backbone = save_hashed({**feats, "classifier.1.weight": torch.randn(8, 4), "classifier.6.bias": torch.randn(8)},
                           folder, stem)
    lin_path = folder / f"{net}.pth"
    torch.save({f"lin{i}.model.1.weight": w for i, w in enumerate(lins)}, lin_path)
    return backbone, lin_path, feats, lins


def test_lpips_feature_nets_match_torchvision_sizes():
    alex, vgg = LPIPS("alex"), LPIPS("vgg")
    assert n_params(alex.net) == 2_469_696 and n_params(vgg.net) == 14_714_688
    assert [k for k in alex.net.state_dict() if k.endswith(".weight")] == [
        f"features.{i}.weight" for i in (0, 3, 6, 8, 10)]
    assert "features.28.bias" in vgg.net.state_dict()
    assert sorted(alex.lins.state_dict()) == [f"lin{i}.model.1.weight" for i in range(5)]
    assert set(alex.state_dict()) == {f"net.{k}" for k in alex.net.state_dict()} | {
        f"lins.{k}" for k in alex.lins.state_dict()}
    with pytest.raises(ValueError, match="alex"):
        LPIPS("squeeze")


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_from_files_matches_a_functional_recomputation(tmp_path, net):
    backbone, lin_path, feats, lins = lpips_files(tmp_path, net)
    model = LPIPS.from_files(net, backbone, lin_path)
    x, y = torch.rand(2, 3, 48, 40) * 2 - 1, torch.rand(2, 3, 48, 40) * 2 - 1
    with torch.no_grad():
        d = model(x, y)
        assert d.shape == (2,)
        assert torch.allclose(d, reference_lpips(feats, lins, net, x, y), rtol=1e-4, atol=1e-7)
        assert torch.equal(model(x, x), torch.zeros(2))
        assert torch.allclose(model(y, x), d, rtol=1e-5, atol=1e-8)
        assert (d > 0).all()


def test_lpips_files_are_checked(tmp_path):
    backbone, lin_path, _, _ = lpips_files(tmp_path, "alex")
    with pytest.raises(WeightsError, match="vgg16-397923af.pth"):
        LPIPS.from_files("vgg", None, lin_path)
    with pytest.raises(WeightsError, match="does not fit LPIPS \\(vgg\\) feature network"):
        LPIPS.from_files("vgg", backbone, lin_path)
    renamed = tmp_path / "alexnet-owt-7be5be79.pth"
    renamed.write_bytes(backbone.read_bytes())
    with pytest.raises(WeightsError, match="does not match"):
        LPIPS.from_files("alex", renamed, lin_path)
    assert LPIPS.from_files("alex", renamed, lin_path, check_hash=False)


def test_lpips_channel_normalisation_survives_float16():
    big = torch.full((1, 4, 2, 2), 300.0, dtype=torch.float16)  # 300 ** 2 overflows float16
    assert torch.allclose(normalize_channels(big), torch.full((1, 4, 2, 2), 0.5))
    assert torch.equal(normalize_channels(torch.zeros(1, 4, 2, 2, dtype=torch.float16)), torch.zeros(1, 4, 2, 2))
    model = LPIPS("alex").half()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float16)
    assert model(x, x).dtype == torch.float16


def test_lpips_sizes_gradients_and_eval_mode():
    model = LPIPS("alex")
    for lin in (model.lins[i] for i in range(5)):
        lin.model[1].weight.data.abs_()
    model.train()
    assert not any(m.training for m in model.modules())
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    d = model(x, torch.rand(2, 3, 32, 32) * 2 - 1)
    d.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert model(torch.zeros(1, 3, 31, 31), torch.ones(1, 3, 31, 31)).shape == (1,)
    with pytest.raises(ValueError, match="at least 31 px"):
        model(torch.zeros(1, 3, 30, 64), torch.zeros(1, 3, 30, 64))
    with pytest.raises(ValueError, match="one shape"):
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 40))
    with pytest.raises(ValueError, match="at least 16 px"):
        LPIPS("vgg")(torch.zeros(1, 3, 15, 32), torch.zeros(1, 3, 15, 32))


# ---------------------------------------------------------------- MoCo v2

def moco_checkpoint(width: float = 0.25) -> tuple[resnet.ResNet, dict]:
    """A MoCo-v2 training checkpoint: query and key encoders with MLP heads, plus metadata."""
    q, k = resnet.ResNet(50, width), resnet.ResNet(50, width)
    randomize_bn(q)
    sd: dict[str, torch.Tensor] = {}
    for name, enc in (("encoder_q", q), ("encoder_k", k)):
        body = {n: v for n, v in enc.state_dict().items() if not n.startswith("fc.")}
        sd.update({f"module.{name}.{n}": v.clone() for n, v in body.items()})
        sd.update({f"module.{name}.fc.0.weight": torch.randn(q.features, q.features),
                   f"module.{name}.fc.0.bias": torch.randn(q.features),
                   f"module.{name}.fc.2.weight": torch.randn(128, q.features),
                   f"module.{name}.fc.2.bias": torch.randn(128)})
    sd["module.queue"] = torch.randn(128, 16)
    return q.eval(), {"epoch": 800, "arch": "resnet50", "state_dict": sd}


def test_moco_loads_encoder_q_and_matches_restyle(tmp_path):
    q, ck = moco_checkpoint()
    path = tmp_path / "moco_v2_800ep_pretrain.pt"
    torch.save(ck, path)
    moco = MocoFeatures.from_file(path, size=64)
    assert moco.size == 64 and not any(p.requires_grad for p in moco.parameters())
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        f = moco(x)
        ref = F.normalize(q.embed(F.interpolate(x, size=64, mode="nearest")), dim=1)
    assert f.shape == (2, 512)
    assert torch.allclose(f.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(f, ref, atol=1e-6)
    moco.train()
    assert not any(m.training for m in moco.modules())
    loss, sim = similarity_loss(moco, x.clone(), x)
    assert loss.abs() < 1e-5 and torch.allclose(sim, torch.ones(2), atol=1e-5)
    loss, _ = similarity_loss(moco, torch.rand(2, 3, 96, 96) * 2 - 1, x)
    assert loss > 0


def test_moco_file_without_a_query_encoder_is_refused(tmp_path):
    _, ck = moco_checkpoint(0.125)
    path = tmp_path / "moco.pt"
    torch.save({"state_dict": {k: v for k, v in ck["state_dict"].items() if "encoder_q" not in k}}, path)
    with pytest.raises(WeightsError, match="module.encoder_q"):
        MocoFeatures.from_file(path, check_hash=False)
    torch.save(resnet.ResNet(50, 0.125).state_dict(), path)  # a plain ImageNet ResNet
    with pytest.raises(WeightsError, match="not a MoCo checkpoint"):
        MocoFeatures.from_file(path)
    with pytest.raises(WeightsError, match="moco_v2_800ep_pretrain.pt"):
        MocoFeatures.from_file(None)
