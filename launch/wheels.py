"""Downloads every package toonmix needs on top of a node's own PyTorch, for an offline install.

    make wheels                                  # the same as:
    python -m launch.wheels --out wheels         # CPython 3.12, manylinux x86_64
    python -m launch.wheels --out wheels --python-version 3.11 --platform manylinux_2_28_aarch64

Run it where PyPI is reachable, from a set-up checkout (`make setup`): the packages and
versions are the ones pinned in requirements.txt and everything they need, read from
this environment's installed metadata with the markers evaluated for the target Python
and platform. PyTorch itself, what only PyTorch needs (triton, the nvidia-* CUDA
libraries) and setuptools are left out: a GPU image brings its own. Each package is fetched as a wheel
for the target; one with no such wheel (DeepSpeed ships only a source archive) as its
source archive, which the offline install builds against the node's torch.

The folder gets the files and ``requirements.txt`` pinning every one of them. Copy it to
the node and, with the node's Python (docs/gpu_check.md):

    python -m pip install --no-index --find-links wheels wheel
    python -m pip install --no-index --find-links wheels --no-build-isolation -r wheels/requirements.txt
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# The node's own: torch (the image's build); setuptools, which torch requires with an upper
# bound a pin here would break (torch 2.11: setuptools<82); pip, which runs the install.
NODE_HAS = {"torch", "setuptools", "pip"}
# deepspeed's setup.py imports torch, so it is built with --no-build-isolation, against the
# node's setuptools and this (needed there when that setuptools is older than 70.1).
BUILD_TOOLS = ["wheel"]


def read_pins(path: Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line in a requirements file and the files
    it includes with ``-r``; anything else is an error (the lists here are fully pinned)."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            pins.update(read_pins(path.parent / line[3:].strip()))
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        if len(spec) != 1 or spec[0].operator != "==":
            raise ValueError(f"{path}: {line!r} is not pinned with ==")
        pins[canonicalize_name(req.name)] = spec[0].version
    return pins


def target_environment(python_version: str, platform: str) -> dict[str, str]:
    """PEP 508 marker values for CPython ``python_version`` on a Linux ``platform`` tag."""
    env = default_environment()
    machine = next((m for m in ("x86_64", "aarch64") if platform.endswith(m)), env["platform_machine"])
    env.update(python_version=python_version, python_full_version=f"{python_version}.0",
               implementation_name="cpython", platform_python_implementation="CPython",
               sys_platform="linux", platform_system="Linux", os_name="posix", platform_machine=machine)
    return env


def closure(roots: list[str], env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Every distribution ``roots`` need in ``env``, as installed here (name -> version), without
    NODE_HAS and what only they need; and the names needed there but not installed here."""
    found: dict[str, str] = {}
    missing: list[str] = []
    todo = [(canonicalize_name(r), frozenset()) for r in roots]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        if name in NODE_HAS or (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        found[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})):
                continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return dict(sorted(found.items())), sorted(set(missing))


def platform_tags(platform: str) -> list[str]:
    """``platform`` and every older manylinux tag a node of it also runs: pip widens only the
    legacy ``manylinux2014``/``2010`` names itself, and most wheels are tagged ``manylinux_2_17``."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    glibc, arch = int(m.group(1)), m.group(2)
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = []
    for minor in range(glibc, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in legacy:
            tags.append(f"{legacy[minor]}_{arch}")
    return tags


def download(plan: list[tuple[str, str | None]], out: Path, python_version: str, platform: str) -> dict[str, str]:
    """Fetches every ``(name, version)`` into ``out``: the target's wheel, else (for those with
    none) the source archive. Returns name -> "wheel" or "sdist"."""
    specs = {n: f"{n}=={v}" if v else n for n, v in plan}
    base = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--dest", str(out)]
    target = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    target += [a for tag in platform_tags(platform) for a in ("--platform", tag)]
    kinds = {n: "wheel" for n in specs}
    while True:  # one pip call for all wheels; each package without one moves to the source list
        wheels = [specs[n] for n, k in kinds.items() if k == "wheel"]
        r = subprocess.run(base + target + wheels, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if r.returncode == 0:
            break
        m = re.search(r"No matching distribution found for ([\w.\-]+)", r.stderr)
        if not m or kinds.get(canonicalize_name(Requirement(m.group(1)).name)) != "wheel":
            raise RuntimeError(f"pip download failed:\n{r.stderr.strip()[-2000:]}")
        kinds[canonicalize_name(Requirement(m.group(1)).name)] = "sdist"
    for name in [n for n, k in kinds.items() if k == "sdist"]:
        print(f"[wheels] no {platform} wheel for Python {python_version}: {specs[name]} as its source archive",
              file=sys.stderr, flush=True)
        # Still for the target Python (a release that does not support it must fail here, not on
        # the node); only this package from source, its build tools as wheels.
        source = ["--no-binary", name, "--python-version", python_version, "--implementation", "cp"]
        r = subprocess.run(base + source + [specs[name]], stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{specs[name]}: neither a wheel nor a source archive could be downloaded:\n"
                               f"{r.stderr.strip()[-2000:]}")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.wheels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("wheels"), help="folder to fill (default: wheels, git-ignored)")
    p.add_argument("--python-version", default="3.12", help="the node's Python, major.minor (default 3.12)")
    p.add_argument("--platform", default="manylinux_2_28_x86_64",
                   help="the node's wheel platform tag (default manylinux_2_28_x86_64; older manylinux "
                        "wheels are accepted as pip accepts them)")
    p.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt",
                   help="pinned requirements to serve (default: requirements.txt)")
    p.add_argument("--dry-run", action="store_true", help="print the packages and versions, download nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pins = read_pins(args.requirements)
    env = target_environment(args.python_version, args.platform)
    wanted, missing = closure([n for n in pins if n not in NODE_HAS] + BUILD_TOOLS, env)
    drift = {n: (pins[n], v) for n, v in wanted.items() if n in pins and pins[n] != v}
    if drift:
        print(f"error: this environment differs from {args.requirements.name} ({drift}); run `make setup` first",
              file=sys.stderr)
        return 2
    plan = [(n, v) for n, v in wanted.items()] + [(n, pins.get(n)) for n in missing]
    print(f"[wheels] {len(plan)} packages for CPython {args.python_version} on {args.platform}, without "
          f"{', '.join(sorted(NODE_HAS))}", file=sys.stderr)
    if missing:
        print(f"[wheels] not installed here, so fetched at their pin or newest, their own needs not followed: "
              f"{', '.join(missing)}", file=sys.stderr)
    if args.dry_run:
        for n, v in plan:
            print(f"{n}=={v}" if v else n)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        kinds = download(plan, args.out, args.python_version, args.platform)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    lines = [f"{n}=={v}" if v else n for n, v in plan]
    (args.out / "requirements.txt").write_text(
        f"# Everything toonmix needs beside torch, for CPython {args.python_version} on {args.platform}\n"
        "# (python -m launch.wheels); install with --no-index --find-links on this folder.\n" + "\n".join(lines) + "\n")
    size = sum(f.stat().st_size for f in args.out.iterdir()) / 2**20
    sdists = sorted(n for n, k in kinds.items() if k == "sdist")
    print(f"[wheels] {args.out}: {len(plan)} packages ({len(sdists)} as source: {', '.join(sdists) or 'none'}), "
          f"{size:.0f} MiB; requirements.txt pins them", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
