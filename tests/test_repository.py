"""Repository-level facts the rest of the project relies on."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_accelerate_config_is_a_valid_single_node_ddp_config():
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "accelerate_config.yaml"))
    assert cfg.distributed_type.value == "MULTI_GPU"
    assert cfg.num_machines == 1 and cfg.gpu_ids == "all" and not cfg.use_cpu


def test_top_level_packages_import_from_the_root():
    for name in ("ops", "trainer", "datasets", "launch", "eval", "benchmarks"):
        mod = importlib.import_module(name)
        assert Path(mod.__file__).resolve().parent == ROOT / name


def test_accelerate_does_not_take_our_datasets_folder_for_hugging_face():
    code = "from accelerate.utils import is_datasets_available; print(is_datasets_available())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


# ----------------------------------------------------------------------------
# The layers of docs/architecture.md, checked on every import in the code.

MODELS = ("trainer.networks", "trainer.model_io")
LOOPS = ("trainer.gan", "trainer.encoder", "trainer.triplet")
# Layer (longest matching prefix wins) -> the packages its modules may import from. A loop may
# also import its own package (added in allowed_for); launch/, tests/ and benchmarks/ may import anything.
LAYERS = {
    "ops": ("ops",),
    "datasets": ("ops", "datasets"),
    "trainer.networks": ("ops", *MODELS),
    "trainer.model_io": ("ops", *MODELS),
    "trainer.run": ("ops", "datasets", *MODELS, "trainer.run"),
    "trainer.gan": ("ops", "datasets", *MODELS, "trainer.run", "eval"),
    "trainer.encoder": ("ops", "datasets", *MODELS, "trainer.run", "eval"),
    "trainer.triplet": ("ops", "datasets", *MODELS, "trainer.run", "eval"),
    "trainer": (),
    "eval": ("ops", "datasets", *MODELS, "eval"),
}
OURS = ("ops", "datasets", "trainer", "eval", "launch", "benchmarks", "tests")


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _layer(module: str) -> str | None:
    matches = [layer for layer in LAYERS if _inside(module, layer)]
    return max(matches, key=len) if matches else None


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of our packages in ``tree``, inside functions too."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            # `from trainer.gan import loop` imports the module trainer.gan.loop
            found += [(node.lineno, f"{base}.{a.name}" if (ROOT / (base.replace(".", "/") + f"/{a.name}.py")).is_file()
                       or (ROOT / base.replace(".", "/") / a.name).is_dir() else base) for a in node.names]
    return [(line, m) for line, m in found if m.split(".")[0] in OURS]


def layer_violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Each import in ``source`` (the text of ``module``) that the layer rules forbid, as a message."""
    layer = _layer(module)
    if layer is None:
        return []
    own = next((loop for loop in LOOPS if _inside(module, loop)), None)
    allowed = LAYERS[layer] + ((own,) if own else ())
    out = []
    for line, target in _imported(ast.parse(source), module, is_package):
        if not any(_inside(target, a) for a in allowed):
            out.append(f"{module.replace('.', '/')}.py:{line}: {layer} may not import {target} "
                       f"(allowed: {', '.join(allowed) or 'nothing of ours'})")
    return out


def test_every_import_follows_the_layers():
    problems = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in OURS:
            continue
        module = ".".join(rel.with_suffix("").parts)
        is_package = module.endswith(".__init__")
        problems += layer_violations(module.removesuffix(".__init__"), path.read_text(), is_package)
    assert problems == [], "imports against the layers of docs/architecture.md:\n" + "\n".join(problems)


@pytest.mark.parametrize("module, line", [
    ("eval.cdsm", "from trainer.gan.loop import training_loop"),        # eval importing a training loop
    ("eval.features", "from trainer.run.distributed import Dist"),      # eval importing the run machinery
    ("trainer.networks.swap", "from eval.cdsm import MixConfig"),       # model code importing eval
    ("trainer.model_io.build", "from trainer.run.config import ConfigError"),
    ("datasets.loader", "from trainer.networks import Generator"),      # data importing models
    ("trainer.triplet.loop", "from trainer.encoder.setup import build_restyle"),  # one loop from another
    ("trainer.run.steps", "from trainer.gan import setup"),             # shared machinery from a loop
    ("trainer.gan.loop", "import launch.train_gan"),                    # anything but launch/ importing launch/
    ("trainer.gan.state", "from ..encoder import config"),              # relative imports resolve too
])
def test_a_forbidden_import_is_reported(module, line):
    problems = layer_violations(module, line + "\n")
    assert len(problems) == 1 and "may not import" in problems[0], problems


def test_allowed_imports_are_not_reported():
    assert layer_violations("trainer.gan.loop", "from trainer.gan import setup\nfrom trainer.run.steps import x\n"
                            "from trainer.networks import Generator\nfrom datasets.imageio import to_uint8\n") == []
    assert layer_violations("eval.cdsm", "from trainer.networks.swap import g_swap\nfrom .fid import measure\n") == []
    assert layer_violations("launch.demo", "from trainer.gan.loop import training_loop\n") == []


def test_the_stated_torch_range_admits_this_torch_and_the_pin():
    import tomllib

    import torch
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (req,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"]
    assert Version(torch.__version__.split("+")[0]) in req.specifier
    pin = next(line.split("==")[1].strip() for line in (ROOT / "requirements-build.txt").read_text().splitlines()
               if line.startswith("torch=="))
    assert Version(pin) in req.specifier and Version("2.11.0") in req.specifier  # the floor GPU images bring
    assert "PyTorch 2.11 to 2.13" in (ROOT / "README.md").read_text().replace("\n  ", " ")
