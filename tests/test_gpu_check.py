"""benchmarks/gpu_check.py: every step at plumbing sizes on the CPU, failures and time boxes
recorded without stopping the rest, and a clear exit where there is no GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmarks.gpu_check as gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_cpu_run_records_every_step(tmp_path):
    out = tmp_path / "g"
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res == json.loads((out / "results.json").read_text())
    assert res["device"] == "cpu" and res["torch"] == torch.__version__ and res["tiny"] is True
    assert list(res["steps"]) == [s for s, _, _ in gpu_check.STEPS]
    # The build is the one step a CPU cannot run; every other step ran its real code.
    assert res["steps"]["build"]["status"] == "skipped" and "CUDA" in res["steps"]["build"]["reason"]
    assert all(s["status"] == "ok" for name, s in res["steps"].items() if name not in ("build", "zero"))
    assert res["steps"]["zero"]["status"] == ("ok" if res["deepspeed"] else "skipped")
    # CUDA tests were collected and, with no GPU, all skipped.
    assert res["cuda_tests.tests"] > 0 and res["cuda_tests.skipped"] == res["cuda_tests.tests"]
    assert "tests/test_ops_cuda.py" in res["cuda_tests.files"]
    for key in ("ops.upfirdn2d_ref_fwd_ms", "ops.bias_act_fraction_of_copy", "networks.train_step_reg_img_s_16_cpu",
                "train_gan.s_per_kimg", "fid.extract_img_s", "fid.fid50k_full_projected_s", "restyle.s_per_img"):
        assert res[key] > 0, key
    log = (out / "log.txt").read_text()
    assert all(f"===== {name} " in log for name in res["steps"])


FAKE_STEPS = '''
import json, sys, time
step = sys.argv[1]
if step == "ops":
    raise RuntimeError("kernel exploded")
if step == "networks":
    time.sleep(60)
print(json.dumps({"figure": 1.5, "step": step}))
'''


def test_failures_and_timeouts_are_recorded_and_the_rest_runs(tmp_path, monkeypatch, capsys):
    script = tmp_path / "fake_steps.py"
    script.write_text(FAKE_STEPS)
    monkeypatch.setattr(gpu_check, "STEP_SCRIPT", script)
    monkeypatch.setattr(gpu_check, "STEPS", [("ops", 30, 30), ("networks", 30, 2), ("fid", 30, 30)])
    code = gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "g")])
    assert code == 1
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ops, nets, fid = (res["steps"][k] for k in ("ops", "networks", "fid"))
    assert ops["status"] == "failed" and "kernel exploded" in ops["error"]
    assert nets["status"] == "timeout" and nets["seconds"] < 10
    assert fid["status"] == "ok" and res["fid.figure"] == 1.5 and res["fid.step"] == "fid"
    assert "RuntimeError: kernel exploded" in (tmp_path / "g" / "log.txt").read_text()
    # A second run into the same folder starts each step from an empty work folder.
    stale = tmp_path / "g" / "work" / "fid" / "stale.txt"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("from the run before")
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "g"), "--steps", "fid"]) == 0
    assert not stale.exists()


def test_no_gpu_exits_2_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "g")]) == 2
    assert "no CUDA GPU found" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()  # nothing written for a check that did not run


@pytest.mark.parametrize("argv, message", [(["--device", "cpu"], "only at --tiny"),
                                           (["--device", "cpu", "--tiny", "--steps", "bogus"], "unknown step")])
def test_bad_arguments_exit_2(tmp_path, argv, message, capsys):
    assert gpu_check.main([*argv, "--out", str(tmp_path / "g")]) == 2
    assert message in capsys.readouterr().err
