"""The CUDA sources compile on a machine without a GPU: nvcc builds the kernels
for sm_80 and sm_90, the host compiler builds the torch bindings against the
installed torch headers, and the linked extension imports and validates its
inputs. Runs wherever nvcc exists (CI included); flags come from ops._build so
this checks the code as the runtime build compiles it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

from ops import _build, bias_act, upfirdn2d

NVCC = shutil.which("nvcc")
# Two nvcc builds for sm_80 and sm_90 take two minutes on 2 cores: `make test-all` runs them.
pytestmark = [pytest.mark.skipif(NVCC is None, reason="nvcc is not installed"), pytest.mark.slow]
ARCHS = ("80", "90")
OPS = {"upfirdn2d": upfirdn2d._SOURCES, "bias_act": bias_act._SOURCES}


def _cuda_home() -> Path:
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return Path(env)
    if Path("/usr/local/cuda").exists():
        return Path("/usr/local/cuda")
    return Path(NVCC).resolve().parents[1]


def _commands(name: str, sources: list[str], out: Path) -> tuple[list[list[str]], list[str]]:
    """Compile commands (run in parallel) and the link command for one extension."""
    from torch.utils import cpp_extension

    cpp, cu = (_build.CSRC / s for s in sources)
    includes = [f"-I{_build.CSRC}"]
    host_includes = [f"-isystem{p}" for p in cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]]
    host = ["c++", "-c", str(cpp), "-o", str(out / f"{name}_binding.o"), "-std=c++20", "-fPIC",
            "-DTORCH_API_INCLUDE_EXTENSION_H", f"-DTORCH_EXTENSION_NAME={name}",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            *_build.CXX_FLAGS, *includes, *host_includes]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    device = [NVCC, "-c", str(cu), "-o", str(out / f"{name}_kernel.o"), *cpp_extension.COMMON_NVCC_FLAGS,
              *_build.NVCC_FLAGS, *gencode, "--compiler-options", "-fPIC", *includes]
    torch_lib = Path(torch.__file__).parent / "lib"
    cuda_lib = _cuda_home() / "lib64"
    link = ["c++", "-shared", str(out / f"{name}_binding.o"), str(out / f"{name}_kernel.o"),
            "-o", str(out / f"{name}.so"), f"-L{torch_lib}", "-lc10", "-ltorch", "-ltorch_cpu",
            "-ltorch_python", f"-L{cuda_lib}", "-lcudart", f"-Wl,-rpath,{torch_lib}", f"-Wl,-rpath,{cuda_lib}"]
    return [host, device], link


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cuda_build")
    jobs, links = [], []
    for name, sources in OPS.items():
        compiles, link = _commands(name, sources, out)
        jobs += [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in compiles]
        links.append(link)
    for job in jobs:
        log = job.communicate(timeout=600)[0]
        assert job.returncode == 0, f"{' '.join(job.args[:3])} failed:\n{log[-4000:]}"
        # Our sources compile without warnings (torch's own headers may warn).
        ours = [ln for ln in log.splitlines() if "warning" in ln.lower() and "ops/csrc" in ln]
        assert not ours, "\n".join(ours)
    for link in links:
        subprocess.run(link, check=True, capture_output=True, text=True)
    return out


@pytest.mark.parametrize("name", list(OPS))
def test_kernels_contain_sm80_and_sm90_code(built, name):
    # The embedded fat binary records, per cubin, the ptxas options it was built with.
    blob = (built / f"{name}_kernel.o").read_bytes()
    for arch in ARCHS:
        assert f"-arch sm_{arch}".encode() in blob


@pytest.mark.parametrize("name", list(OPS))
def test_linked_extension_imports_and_checks_inputs(built, name):
    code = textwrap.dedent(f"""
        import importlib.util, torch
        spec = importlib.util.spec_from_file_location({name!r}, {str(built / (name + '.so'))!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        fn = getattr(mod, {name!r})
        x = torch.randn(1, 2, 4, 4)
        args = {{"upfirdn2d": (x, torch.ones(2, 2), 1, 1, 1, 1, 0, 0, 0, 0, 0),
                 "bias_act": (x, torch.ones(2), x.new_empty(0), 0, 1, 2, 0.2, 1.0, -1.0, 0)}}[{name!r}]
        try:
            fn(*args)
        except RuntimeError as e:
            print("rejected:", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "rejected:" in out.stdout and "CUDA tensor" in out.stdout
