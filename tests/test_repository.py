"""Repository-level facts the rest of the project relies on."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

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
