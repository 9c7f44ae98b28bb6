"""Shared fixtures: the host-side kernel emulator, the test seed, one untrained detector per seed."""

from __future__ import annotations

import copy
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "ops" / "csrc"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True, scope="session")
def untrained_detector():
    """Building and calibrating the untrained Inception takes about 4 s on 2 cores, and the
    commands that tests run in this process (fid, compare, cartoonize, the GAN trainer's FID)
    build it at every call: they share one per seed instead, each caller getting its own copy
    so that none can change another's. tests/test_inception.py checks the function itself
    (it binds the real one on import, before this fixture runs). Yields the shared builder."""
    import eval.inception as inception

    real, built = inception.untrained_inception, {}

    def shared(seed: int = 0):
        if seed not in built:
            built[seed] = real(seed)
        net, info = built[seed]
        return copy.deepcopy(net), dict(info)

    inception.untrained_inception = shared
    yield shared
    inception.untrained_inception = real


class KernelEmulator:
    """ctypes wrapper of tests/csrc/kernel_emulator.cpp (the kernels' code on the host)."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        lib.emu_upfirdn2d.restype = ctypes.c_char_p
        lib.emu_bias_act.restype = None

    @staticmethod
    def _ptr(t: torch.Tensor):
        return ctypes.c_void_p(t.data_ptr())

    def upfirdn2d(self, x: torch.Tensor, g: torch.Tensor, up, down, pad, out_hw, y_strides=None):
        """Runs the kernel on float32 x with correlation taps g; returns (y, plan dict)."""
        n, c, h, w = x.shape
        oh, ow = out_hw
        y = torch.full((n, c, oh, ow), float("nan"))
        if y_strides is not None:
            y = torch.empty_strided((n, c, oh, ow), y_strides).fill_(float("nan"))
        g = g.float().contiguous()
        params = [n, c, h, w, oh, ow, *x.stride(), *y.stride(), up[0], up[1], down[0], down[1],
                  pad[0], pad[2], g.shape[0], g.shape[1]]
        ip = (ctypes.c_longlong * len(params))(*params)
        plan = (ctypes.c_longlong * 8)()
        err = self.lib.emu_upfirdn2d(self._ptr(x), self._ptr(g), self._ptr(y), ip, plan)
        if err is not None:
            raise RuntimeError(err.decode())
        keys = ["tile_w", "tile_h", "in_tile_w", "in_tile_h", "tiles_x", "tiles_y", "smem_bytes", "bad_reads"]
        return y, dict(zip(keys, list(plan)))

    def bias_act(self, x, b, dy, dim, act_code, alpha, gain, clamp, wide=False):
        y = torch.empty_like(x)
        null = ctypes.c_void_p(0)
        self.lib.emu_bias_act(
            self._ptr(x), null if b is None else self._ptr(b), null if dy is None else self._ptr(dy),
            self._ptr(y), ctypes.c_longlong(x.numel()),
            ctypes.c_longlong(x.stride(dim) if b is not None else 1),
            ctypes.c_longlong(x.shape[dim] if b is not None else 1), ctypes.c_int(act_code),
            ctypes.c_float(alpha), ctypes.c_float(gain), ctypes.c_float(-1.0 if clamp is None else clamp),
            ctypes.c_int(0 if dy is None else 1), ctypes.c_int(int(wide)))
        return y


@pytest.fixture(scope="session")
def emulator(tmp_path_factory) -> KernelEmulator:
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    out = tmp_path_factory.mktemp("emu") / "kernel_emulator.so"
    subprocess.run([cxx, "-O1", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Werror", f"-I{CSRC}",
                    str(ROOT / "tests" / "csrc" / "kernel_emulator.cpp"), "-o", str(out)], check=True)
    return KernelEmulator(ctypes.CDLL(str(out)))


@pytest.fixture(scope="session")
def packed(tmp_path_factory) -> dict:
    """A bundle of test_cartoonize's tiny networks (tests/test_bundle.py, tests/test_serve.py)
    and the six-path cartoonize run that built its table, with the same parts."""
    from PIL import Image

    from eval.bundle import Cartoonizer
    from launch import bundle as bundle_cli
    from launch import cartoonize
    from tests.test_cartoonize import make_files

    root = tmp_path_factory.mktemp("bundle")
    files = make_files(root)
    clean = root / "clean"
    clean.mkdir()
    for i in range(4):  # only faces: the API is compared batch for batch with the command
        shutil.copy(files["photos"] / f"p{i}.png", clean)
    six = root / "six"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACCELERATE_USE_CPU", "1")
        assert cartoonize.main(["--photos", str(clean), "--character", "hero", "--target-data", str(files["chars"]),
                                "--encoder-source", files["enc_s"], "--encoder-target", files["enc_t"],
                                "--g-source", files["g_src"], "--g-target", files["g_tgt"], "--out", str(six),
                                "--k", "4", "--batch", "2", "--iters", "2"]) == 0
    path = root / "toonify.bundle"
    assert bundle_cli.main(["--out", str(path), "--g-source", files["g_src"], "--g-target", files["g_tgt"],
                            "--encoder-source", files["enc_s"], "--encoder-target", files["enc_t"],
                            "--lut", str(six / "lut.pt"), "--iters", "2"]) == 0
    photos = [np.asarray(Image.open(clean / f"p{i}.png")) for i in range(4)]
    return {**files, "root": root, "clean": clean, "six": six, "bundle": path, "photos": photos,
            "toon": Cartoonizer.load(path)}
