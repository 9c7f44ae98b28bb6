"""Runs the whole pipeline at demo scale on this machine, then writes a report.

    python -m launch.demo --out runs/demo          (what `make demo` runs)

Stages, each the command a cluster user runs (printed before it starts), with
the small configs launch/configs/demo_*.yaml:

  data            draw photo-like faces and cartoon characters (launch.make_demo_data),
                  write shards (launch.make_shards)
  gan_source      the source generator: by default the shipped 32 px one
                  (launch/weights/demo_source_32px.pt, made by
                  launch/configs/demo_source_pretrain.yaml), sampled into gan_source/;
                  with --source train, trained here from scratch (demo_source.yaml)
  gan_target      fine-tune it to the characters with ADA and FreezeSG
  encoder_source  ReStyle encoder: photos -> source generator
  encoder_target  ReStyle encoder: characters -> G_swap
  eval_encoders   per-pass reconstruction metrics on held-out images (launch.eval_encoder)
  cartoonize      character look-up table, CDSM and the baselines on held-out photos
  fid             FID/KID of both generators (launch.fid)
  probe           measure whether the stages work, with probes trained on the drawn data
                  (launch.probe: characters recognised, face position kept; pass/fail thresholds)
  bundle          <out>/demo.bundle: the cartoonizer in one file (launch.bundle), which
                  `make serve` (python -m launch.serve) shows as a web page
  report          <out>/report.md, <out>/metrics.json and the sheets they show

A finished stage is recorded in <out>/stages/<name>.json and skipped when the
demo runs again; an interrupted training stage continues from its latest
checkpoint (--resume auto), the others start over (make_shards and the FID
cache keep what they had). To redo a stage, delete its record and its folder.

FID needs the TF Inception file (pt_inception-2015-12-05-6726825d.pth,
inception-2015-12-05.pt or weights-inception-2015-12-05-6726825d.pth) in
--weights-dir. Without it the demo measures with an untrained Inception
(`--detector untrained`): the numbers then compare the demo's stages with each
other only, and the report says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.run.stop import WATCH_PARENT_ENV, die_with_parent

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path("launch") / "configs"  # commands run in the repository root
SHIPPED_SOURCE = Path("launch") / "weights" / "demo_source_32px.pt"
"""The demo's stand-in for an FFHQ generator: 32 px, trained by demo_source_pretrain.yaml."""
SHIPPED_SOURCE_SHA256 = "c8a88f093dcb8b4ffc84fe106957431d7b82b8511d0186366894810c38aad6df"


@dataclass
class Stage:
    name: str
    about: str
    commands: list[list[str]] = field(default_factory=list)
    """Each command: [module, args...]; run with `accelerate launch -m` when distributed, else `python -m`."""
    distributed: bool = True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run folder of the demo (every stage writes below it)")
    p.add_argument("--photos", type=int, default=512, help="photo-like training faces")
    p.add_argument("--test-photos", type=int, default=32,
                   help="held-out photo-like faces, cartoonized and measured by the probe (16 left the "
                        "CDSM shares to 1/16 steps and its position error to chance)")
    p.add_argument("--characters", type=int, default=4, help="cartoon characters (64 images each)")
    p.add_argument("--cartoon-characters", type=int, default=2,
                   help="characters the held-out photos are cartoonized as")
    p.add_argument("--k", type=int, default=16, help="references averaged per character in the look-up table")
    p.add_argument("--fid-images", type=int, default=64,
                   help="images per side for FID/KID (the untrained Inception runs ~4 img/s on 2 cores)")
    p.add_argument("--weights-dir", default=os.environ.get("TOONMIX_WEIGHTS", "weights"),
                   help="folder searched for the FID Inception under its public name (default $TOONMIX_WEIGHTS "
                        "or weights/)")
    p.add_argument("--launcher", choices=["accelerate", "python"], default="accelerate",
                   help="start distributed stages with `accelerate launch` (all GPUs, else one CPU process) "
                        "or plain `python -m` (one process)")
    p.add_argument("--only", nargs="+", metavar="STAGE", default=None,
                   help="run only these stages (their inputs must exist)")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo data")
    p.add_argument("--source", choices=["shipped", "train"], default="shipped",
                   help="source generator: the shipped pretrained one (as a real run starts from FFHQ's) or "
                        "one trained here from scratch in a few minutes (faces, but little variety)")
    p.add_argument("--kimg-scale", type=float, default=1.0,
                   help="multiply every training stage's length (run.total_kimg, run.tick_kimg); 0.05 for a smoke run")
    return p


def run_folder(out: str) -> Path:
    """``out`` as the commands (run in the repository root) see it: relative when below the root."""
    p = Path(out).resolve()
    return p.relative_to(ROOT) if p.is_relative_to(ROOT) else p


def length(config: str, scale: float) -> list[str]:
    """Overrides that scale a training config's length (none at scale 1)."""
    from trainer.run.config import raw_config

    if scale == 1.0:
        return []
    run = raw_config(str(ROOT / CONFIGS / config), [])["run"]
    return [f"run.total_kimg={run['total_kimg'] * scale:g}", f"run.tick_kimg={run['tick_kimg'] * scale:g}"]


def detector(weights_dir: str) -> str:
    """The public Inception file when it is in ``weights_dir``, else the untrained stand-in."""
    from launch.fid import DETECTOR_FILES
    from trainer.networks.weights import PUBLIC

    for key in DETECTOR_FILES:
        cand = Path(weights_dir) / PUBLIC[key].filename
        if cand.is_file():
            return str(cand.resolve())  # the commands run in the repository root
    return "untrained"


def verify_shipped_source() -> None:
    """Raises SystemExit unless the shipped source generator is the file the docs describe."""
    path = ROOT / SHIPPED_SOURCE
    if not path.is_file():
        raise SystemExit(f"[demo] {SHIPPED_SOURCE} is missing: restore it (git checkout -- {SHIPPED_SOURCE}) "
                         f"or train a source generator here with --source train")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHIPPED_SOURCE_SHA256:
        raise SystemExit(f"[demo] {SHIPPED_SOURCE} has sha256 {digest}, not the shipped {SHIPPED_SOURCE_SHA256} "
                         f"(a Git LFS pointer or a changed file): restore it or use --source train")


def source_stage(args: argparse.Namespace, o: Path, shards: Path) -> tuple[Stage, Path]:
    """The gan_source stage and the source generator's path the later stages read."""
    if args.source == "train":
        return Stage("gan_source", "train the source generator on photo-like faces", [
            ["launch.train_gan", "--config", str(CONFIGS / "demo_source.yaml"), "--resume", "auto",
             *length("demo_source.yaml", args.kimg_scale),
             f"run.dir={o / 'gan_source'}", f"loader.data={shards / 'photos'}"]]), o / "gan_source" / "network.pt"
    return Stage("gan_source", f"sample the shipped source generator ({SHIPPED_SOURCE})", [
        ["launch.generate", "--ckpt", str(SHIPPED_SOURCE), "--seeds", "0-15", "--outdir", str(o / "gan_source")]],
        distributed=False), SHIPPED_SOURCE


def stages(args: argparse.Namespace) -> list[Stage]:
    """Every stage's commands, with the run folder's paths filled in."""
    o = run_folder(args.out)
    data, shards = o / "data", o / "shards"
    source, gs = source_stage(args, o, shards)
    gt = o / "gan_target" / "network.pt"
    es, et = o / "encoder_source" / "encoder-restyle.pt", o / "encoder_target" / "encoder-restyle.pt"
    det = ["--detector", detector(args.weights_dir)]
    shard = ["--kind", "folder", "--size", "32", "--min-size", "32"]
    names = [f"character{i}" for i in range(min(args.cartoon_characters, args.characters))]
    fid = ["--protocol", "custom", "--num-gen", str(args.fid_images), "--max-real", str(args.fid_images),
           "--kid", "--batch", "16", *det, "--cache-dir", str(o / "fid_cache")]
    return [
        Stage("data", "draw the two-domain faces and write shards", [
            ["launch.make_demo_data", "--out", str(data), "--photos", str(args.photos), "--test-photos",
             str(args.test_photos), "--characters", str(args.characters), "--seed", str(args.seed)],
            ["launch.make_shards", *shard, "--input", str(data / "photos" / "train"), "--out", str(shards / "photos")],
            ["launch.make_shards", *shard, "--labels", "subfolder", "--input", str(data / "characters"),
             "--out", str(shards / "characters")]], distributed=False),
        source,
        Stage("gan_target", "fine-tune it to the characters (ADA, FreezeSG, FreezeD)", [
            ["launch.train_gan", "--config", str(CONFIGS / "demo_target.yaml"), "--resume", "auto",
             *length("demo_target.yaml", args.kimg_scale),
             f"run.dir={o / 'gan_target'}", f"model.init={gs}", f"loader.data={shards / 'characters'}"]]),
        Stage("encoder_source", "train the photo encoder", [
            ["launch.train_encoder", "--config", str(CONFIGS / "demo_encoder_source.yaml"), "--resume", "auto",
             *length("demo_encoder_source.yaml", args.kimg_scale),
             f"run.dir={o / 'encoder_source'}", f"decoder.source={gs}", f"loader.data={shards / 'photos'}",
             f"run.val_data={data / 'photos' / 'test'}"]]),
        Stage("encoder_target", "train the character encoder into G_swap", [
            ["launch.train_encoder", "--config", str(CONFIGS / "demo_encoder_target.yaml"), "--resume", "auto",
             *length("demo_encoder_target.yaml", args.kimg_scale),
             f"run.dir={o / 'encoder_target'}", f"decoder.source={gs}", f"decoder.target={gt}",
             f"loader.data={shards / 'characters'}"]]),
        Stage("eval_encoders", "reconstruction metrics per refinement pass", [
            ["launch.eval_encoder", "--encoder", str(es), "--images", str(data / "photos" / "test"), "--iters", "3", "--no-lpips",
             "--out", str(o / "metrics" / "encoder_source.json")],
            ["launch.eval_encoder", "--encoder", str(et), "--images", str(data / "characters" / names[0]),
             "--iters", "3", "--no-lpips", "--out", str(o / "metrics" / "encoder_target.json")]], distributed=False),
        Stage("cartoonize", "build the look-up table and cartoonize held-out photos", [
            ["launch.cartoonize", "--photos", str(data / "photos" / "test"), "--character", name,
             "--target-data", str(data / "characters"), "--encoder-source", str(es), "--encoder-target", str(et),
             "--g-source", str(gs), "--g-target", str(gt), "--out", str(o / "cartoons" / name),
             "--lut", str(o / "lut.pt"), "--k", str(args.k), "--iters", "3", "--swap-res", "16",
             "--mix-index", "4"] for name in names]),
        Stage("fid", "FID/KID of the generators", [
            ["launch.fid", "--real", str(shards / "photos"), "--fake", str(gs), *fid,
             "--out", str(o / "metrics" / "fid_gan_source.json"), "--tb", str(o / "gan_source")],
            ["launch.fid", "--real", str(shards / "characters"), "--fake", str(gs), *fid,
             "--out", str(o / "metrics" / "fid_gan_source_vs_characters.json")],
            ["launch.fid", "--real", str(shards / "characters"), "--fake", str(gt), *fid,
             "--out", str(o / "metrics" / "fid_gan_target.json"), "--tb", str(o / "gan_target")]]),
        Stage("probe", "measure the stages with probes trained on the drawn data", [
            ["launch.probe", "--data", str(data), "--cartoons", str(o / "cartoons"), "--g-source", str(gs),
             "--g-target", str(gt), "--out", str(o / "metrics" / "probe.json")]], distributed=False),
        Stage("bundle", "pack the cartoonizer into one file for the web page and the Python API", [
            ["launch.bundle", "--out", str(o / "demo.bundle"), "--run-dir", str(o)]], distributed=False),
        Stage("report", "write report.md and metrics.json", [], distributed=False),
    ]


def launch_prefix(module: str, distributed: bool, launcher: str) -> tuple[list[str], str]:
    """(argv prefix that runs ``module``, how a user would type it)."""
    if not distributed or launcher == "python":
        return [sys.executable, "-m", module], f"python -m {module}"
    import torch

    acc = [sys.executable, "-m", "accelerate.commands.launch"]
    gpus = torch.cuda.device_count()
    if gpus > 1:
        n = max(k for k in range(1, gpus + 1) if 8 % k == 0)  # the demo's batches are 8
        flags = ["--config_file", "accelerate_config.yaml", "--num_processes", str(n)]
    elif gpus == 1:
        flags = ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        flags = ["--config_file", "launch/accelerate/cpu_test.yaml",
                 "--num_cpu_threads_per_process", str(os.cpu_count() or 1)]
    return [*acc, *flags, "-m", module], f"accelerate launch {' '.join(flags)} -m {module}"


STOP_GRACE_S = 120
"""Seconds a stage's command gets to finish its step and write its checkpoint after a stop."""


def run_command(argv: list[str], log) -> int:
    """Runs one command, showing its output live (progress bars included) and appending it to ``log``.

    The command dies with the demo: it gets SIGTERM when the demo exits, however it exits
    (PR_SET_PDEATHSIG), and a trainer below it watches its own launcher the same way
    ($TOONMIX_WATCH_PARENT), so no process outlives the demo. On Ctrl-C or SIGTERM to the
    demo alone, the command is told to stop (trainers save a checkpoint) and waited for."""
    env = {**os.environ, WATCH_PARENT_ENV: "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                            preexec_fn=_own_group_dying_with_parent)
    try:
        while chunk := os.read(proc.stdout.fileno(), 4096):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            log.write(chunk)
            log.flush()
    except KeyboardInterrupt:
        stop_child(proc)
        raise
    return proc.wait()


def _own_group_dying_with_parent() -> None:
    """In the child before exec: its own process group (the demo signals the command and
    everything it started as one), and SIGTERM when the demo exits."""
    os.setpgrp()
    die_with_parent()


def stop_child(proc: subprocess.Popen) -> None:
    """SIGTERM to the command's process group (a trainer saves first; a second request is
    ignored by one already stopping), then a bounded wait until the whole group is gone."""
    print(f"[demo] stopping the running command (pid {proc.pid}); a trainer writes a checkpoint first",
          file=sys.stderr, flush=True)
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.time() + STOP_GRACE_S
    while time.time() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
        time.sleep(0.2)
    if _group_alive(proc.pid):
        _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _terminate_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_stage(stage: Stage, args: argparse.Namespace, out: Path) -> tuple[float, list[str]]:
    """Runs the stage's commands in order; returns (seconds, the commands as typed).
    Raises SystemExit on a failure."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    typed = []
    with open(logs / f"{stage.name}.log", "ab") as log:
        for cmd in stage.commands:
            prefix, shown = launch_prefix(cmd[0], stage.distributed, args.launcher)
            typed.append(" ".join([shown, *cmd[1:]]))
            print(f"\n$ {typed[-1]}", flush=True)
            log.write(f"$ {typed[-1]}\n".encode())
            rc = run_command([*prefix, *cmd[1:]], log)
            if rc != 0:
                raise SystemExit(f"[demo] stage {stage.name} failed (exit {rc}); its output is in "
                                 f"{logs / stage.name}.log. Fix the cause and run the demo again: finished "
                                 f"stages are kept.")
        if stage.name == "report":
            from launch._demo_report import write_report

            found = records(out)
            write_report(out, {s.name: found[s.name] for s in stages(args) if s.name in found},
                         detector(args.weights_dir))
    return time.time() - t0, typed


def records(out: Path) -> dict[str, dict]:
    """The finished stages' records, by name."""
    found = {}
    for f in sorted((out / "stages").glob("*.json")):
        try:
            found[f.stem] = json.loads(f.read_text())
        except ValueError:
            print(f"[demo] {f} is unreadable; its stage runs again", file=sys.stderr)
    return found


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kimg_scale <= 0 or min(args.photos, args.test_photos, args.characters, args.cartoon_characters,
                                   args.k) < 1 \
            or args.fid_images < 2:
        print("error: --kimg-scale must be > 0, counts >= 1 and --fid-images >= 2", file=sys.stderr)
        return 2
    out = ROOT / run_folder(args.out)
    plan = stages(args)
    known = [s.name for s in plan]
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        print(f"error: unknown stage(s) {unknown}; stages: {', '.join(known)}", file=sys.stderr)
        return 2
    if args.source == "shipped":
        verify_shipped_source()
    (out / "stages").mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)  # a job manager's stop: as Ctrl-C
    try:
        return run_stages(plan, args, out)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stages(plan: list[Stage], args: argparse.Namespace, out: Path) -> int:
    """Runs the stages not done earlier, recording each; 130 when interrupted."""
    start = time.time()
    for i, stage in enumerate(plan, 1):
        if args.only and stage.name not in args.only:
            continue
        record = out / "stages" / f"{stage.name}.json"
        if record.is_file() and stage.name != "report" and not args.only:
            print(f"[demo] {i}/{len(plan)} {stage.name}: done earlier ({record}), skipped", flush=True)
            continue
        print(f"\n[demo] {i}/{len(plan)} {stage.name}: {stage.about}  ({time.time() - start:.0f} s so far)", flush=True)
        try:
            seconds, typed = run_stage(stage, args, out)
        except KeyboardInterrupt:
            print(f"\n[demo] interrupted in {stage.name}; run the same command again to resume", file=sys.stderr)
            return 130
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stage": stage.name, "seconds": round(seconds, 1), "commands": typed,
                                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1) + "\n")
        os.replace(tmp, record)  # written only after every command succeeded: a partial stage reruns
    print(f"\n[demo] done in {time.time() - start:.0f} s: {out / 'report.md'}", flush=True)
    if (out / "demo.bundle").is_file():
        print(f"[demo] see the cartoonizer as a web page: {serve_command(out)}", flush=True)
    return 0


def serve_command(out: Path) -> str:
    """The command that serves the demo's bundle (``make serve`` for the default run folder)."""
    if out.resolve() == Path("runs/demo").resolve():
        return "make serve  (then open http://127.0.0.1:8000/)"
    python = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") else "python"
    return shlex.join([python, "-m", "launch.serve", "--bundle", str(out / "demo.bundle"),
                       "--examples", str(out / "data" / "photos" / "test")])


if __name__ == "__main__":
    sys.exit(main())
