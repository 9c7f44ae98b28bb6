"""launch.wheels: the offline package set is the pinned requirements and everything they need
on the target Python, without torch and what only torch needs (no network: --dry-run and
metadata made in the test)."""

from __future__ import annotations


import pytest

from launch import wheels

ROOT = wheels.ROOT


def _dist(root, name: str, version: str, requires: list[str]) -> None:
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def test_closure_follows_markers_extras_and_stops_at_torch(tmp_path, monkeypatch):
    _dist(tmp_path, "toy-root", "1.0", ["toy-old; python_version < '3.12'", "toy-new; python_version >= '3.12'",
                                        "torch>=2.0", "toy-extra[fast]>=2", "toy-dev; extra == 'dev'",
                                        "toy-gone"])
    _dist(tmp_path, "toy-old", "1.0", [])
    _dist(tmp_path, "toy-new", "3.1", [])
    _dist(tmp_path, "toy-extra", "2.5", ["toy-fast; extra == 'fast'", "toy-slow; extra == 'slow'"])
    _dist(tmp_path, "toy-fast", "0.1", [])
    _dist(tmp_path, "toy-slow", "0.1", [])
    _dist(tmp_path, "toy-dev", "0.1", [])
    monkeypatch.syspath_prepend(str(tmp_path))
    found, missing = wheels.closure(["toy-root"], wheels.target_environment("3.12", "manylinux_2_28_x86_64"))
    assert found == {"toy-root": "1.0", "toy-new": "3.1", "toy-extra": "2.5", "toy-fast": "0.1"}
    assert missing == ["toy-gone"]  # needed there, not installed here: fetched at its newest
    found, _ = wheels.closure(["toy-root"], wheels.target_environment("3.10", "manylinux_2_28_x86_64"))
    assert "toy-old" in found and "toy-new" not in found


def test_read_pins_follows_includes_and_refuses_ranges(tmp_path):
    (tmp_path / "build.txt").write_text("# tools\nwheel==0.48.0\n")
    (tmp_path / "req.txt").write_text("-r build.txt\nNumPy==2.4.6   # arrays\n\n")
    assert wheels.read_pins(tmp_path / "req.txt") == {"wheel": "0.48.0", "numpy": "2.4.6"}
    (tmp_path / "loose.txt").write_text("numpy>=2\n")
    with pytest.raises(ValueError, match="not pinned"):
        wheels.read_pins(tmp_path / "loose.txt")


def test_platform_tags_widen_to_older_manylinux():
    tags = wheels.platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and tags.index("manylinux_2_17_x86_64") < tags.index("manylinux2014_x86_64")
    assert "manylinux1_x86_64" in tags and not any("aarch64" in t for t in tags)
    assert wheels.platform_tags("macosx_11_0_arm64") == ["macosx_11_0_arm64"]


def test_dry_run_serves_the_pins_without_torch(capsys):
    assert wheels.main(["--dry-run"]) == 0
    lines = capsys.readouterr().out.split()
    for pin in ("deepspeed==0.19.8", "webdataset==1.0.2", "simplejpeg==1.9.0", "lmdb==1.7.5", "wheel==0.48.0"):
        assert pin in lines
    names = {line.split("==")[0] for line in lines}
    assert not names & {"torch", "setuptools", "pip", "triton"}
    assert not any(n.startswith("nvidia-") for n in names)


def test_an_environment_that_drifted_from_the_pins_exits_2(tmp_path, capsys):
    (tmp_path / "req.txt").write_text("numpy==0.0.1\n")
    assert wheels.main(["--dry-run", "--requirements", str(tmp_path / "req.txt")]) == 2
    assert "make setup" in capsys.readouterr().err
