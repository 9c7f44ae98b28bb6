"""The demo's report: report.md with its image sheets, and metrics.json, from a demo run folder.

Reads what the stages wrote (metrics/*.json, cartoons/<character>/report.json,
the GAN and encoder run folders' latest image grids) and never recomputes a
number; only the probe's pass/fail marks are re-judged against today's
eval.probe.THRESHOLDS. A missing piece is named in the report instead of failing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

ZOOM = 3  # 32 px images are shown three times larger (nearest neighbour: no invented detail)


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _latest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def _save(img: Image.Image, path: Path, zoom: int = ZOOM) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = img.convert("RGB")
    img.resize((img.width * zoom, img.height * zoom), Image.NEAREST).save(path)
    return path.name


def _tile(files: list[Path], cols: int, size: int) -> Image.Image:
    rows = (len(files) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * size, rows * size), "white")
    for i, f in enumerate(files):
        with Image.open(f) as im:
            sheet.paste(im.convert("RGB").resize((size, size), Image.BICUBIC), ((i % cols) * size, (i // cols) * size))
    return sheet


def _stack(files: list[Path]) -> Image.Image:
    """Sheet rows (one per photo) stacked top to bottom."""
    rows = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return Image.fromarray(np.concatenate(rows))


def make_sheets(out: Path) -> dict[str, str]:
    """Writes <out>/sheets/*.png; returns {what: file name} for those that could be made."""
    sheets, folder = {}, out / "sheets"
    photos = sorted((out / "data" / "photos" / "train").glob("*.png"))[:8]
    chars = [f for c in sorted((out / "data" / "characters").glob("*")) for f in sorted(c.glob("*.png"))[:2]][:8]
    if photos and chars:
        sheets["data"] = _save(_tile(photos + chars, 8, 32), folder / "data.png")
    for run, pattern in (("gan_source", "fakes-tick*.png"), ("gan_target", "fakes-tick*.png"),
                         ("encoder_source", "reconstructions-tick*.png"),
                         ("encoder_target", "reconstructions-tick*.png")):
        grid = _latest(out / run, pattern) or _latest(out / run, "grid.png")  # a shipped G: launch.generate's grid
        if grid is not None:
            with Image.open(grid) as im:
                sheets[run] = _save(im, folder / f"{run}.png")
    for char in sorted((out / "cartoons").glob("*")):
        rows = sorted((char / "sheets").glob("*.png"))[:6]
        if rows:
            sheets[f"cartoons/{char.name}"] = _save(_stack(rows), folder / f"cartoons_{char.name}.png")
    return sheets


def collect(out: Path, records: dict[str, dict], detector: str) -> dict:
    """metrics.json's content: every stage's time and every number the stages measured."""
    m = {"detector": detector, "detector_is_public_inception": detector != "untrained",
         "stage_seconds": {k: v.get("seconds") for k, v in records.items()},
         "total_seconds": round(sum(v.get("seconds") or 0 for v in records.values()), 1)}
    for name in ("gan_source", "gan_source_vs_characters", "gan_target"):
        r = _json(out / "metrics" / f"fid_{name}.json")
        if r:
            m[f"fid_{name}"] = {k: r.get(k) for k in ("fid", "kid", "kid_std", "n_real", "n_fake")}
            if r.get("kid_std_note"):
                m[f"fid_{name}"]["kid_std_note"] = r["kid_std_note"]
    for name in ("encoder_source", "encoder_target"):
        r = _json(out / "metrics" / f"{name}.json")
        if r:
            m[name] = r
    cartoons = {}
    for char in sorted((out / "cartoons").glob("*")):
        r = _json(char / "report.json")
        if r:
            cartoons[char.name] = {"photos": r.get("photos"), "refused": len(r.get("refused", [])),
                                   "references": r.get("references"), "settings": r.get("settings"),
                                   "metrics": r.get("metrics")}
    if cartoons:
        m["cartoonize"] = cartoons
    probe = _json(out / "metrics" / "probe.json")
    if probe:
        from eval.probe import judge

        m["probe"] = {**probe, "checks": judge(probe)}  # today's THRESHOLDS, on the numbers measured then
    return m


def _num(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def _kid(r: dict) -> str:
    """KID with its spread over subsets; none shown where the spread is undefined."""
    if r.get("kid") is None:
        return "n/a"
    spread = r.get("kid_std")
    # None: every subset held all images. Results written before that was reported as None
    # hold round-off (about 1e-16) there instead.
    if spread is None or spread <= 1e-9 * max(abs(r["kid"]), 1e-12):
        return _num(r["kid"])
    return f"{_num(r['kid'])} ± {_num(spread, 2)}"


def _fid_rows(m: dict) -> list[str]:
    rows = []
    for key, what in (("fid_gan_source", "source generator vs photo-like faces"),
                      ("fid_gan_source_vs_characters", "source generator vs characters (before fine-tuning)"),
                      ("fid_gan_target", "fine-tuned generator vs characters")):
        r = m.get(key)
        if r:
            rows.append(f"| {what} | {_num(r['fid'])} | {_kid(r)} | {r['n_real']} / {r['n_fake']} |")
    for char, c in (m.get("cartoonize") or {}).items():
        for method, r in (c.get("metrics") or {}).items():
            if "fid" in r:
                rows.append(f"| {method} cartoons of held-out photos vs {char} | {_num(r['fid'])} "
                            f"| {_kid(r)} | {r['n_real']} / {r['n_fake']} |")
    return rows


def _encoder_rows(m: dict) -> list[str]:
    rows = []
    for name, what in (("encoder_source", "photo encoder, held-out photos"),
                       ("encoder_target", "character encoder, a training character")):
        r = m.get(name)
        if not r:
            continue
        for p in r.get("passes", []):
            rows.append(f"| {what} | {p.get('pass')} | {_num(p.get('l2'))} | {_num(p.get('ms_ssim'))} |")
    return rows


VERDICT = {True: "pass", False: "**FAIL**", None: "not measured"}


def _probe_rows(p: dict) -> list[str]:
    """One row per generator and cartoon method: what the probes recognised and measured."""
    rows = []
    for key, what in (("target_g", "fine-tuned G samples"), ("source_g", "source G samples")):
        r = p.get(key) or {}
        if r:
            rows.append(f"| {what} ({r.get('images')}) | - | {_num(r.get('character_share'), 3)} "
                        f"| {_num(r.get('photo_share'), 3)} | - | - | - |")
    for method, r in sorted((p.get("cartoons") or {}).items()):
        if isinstance(r, dict):
            rows.append(f"| {method} cartoons ({r.get('images')}) | {_num(r.get('requested_share'), 3)} "
                        f"| {_num(r.get('character_share'), 3)} | {_num(r.get('photo_share'), 3)} "
                        f"| {_num(r.get('centre_mae_px'), 3)} | {_num(r.get('cx_corr'), 3)} "
                        f"| {_num(r.get('width_corr'), 3)} |")
    return rows


def _probe_section(m: dict) -> list[str]:
    """"Does it work?": each threshold check with its verdict, then the numbers behind them."""
    lines = ["## Does it work?", ""]
    p = m.get("probe")
    if not p:
        return lines + ["(not measured yet: the probe stage has not run)", ""]
    checks = p["checks"]
    verdicts = [c["passed"] for c in checks]
    lines += [f"**{verdicts.count(True)} of {len(checks)} checks pass** ({verdicts.count(False)} fail, "
              f"{verdicts.count(None)} not measured). Probes trained in seconds on the drawn data, which",
              "knows every image's character and face position, measure the stages (`launch.probe`,",
              "`metrics/probe.json`; thresholds in `eval/probe.py`, docs/demo.md).", "",
              "| check | value | threshold | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {c['what']} | {_num(c['value'], 3)} | {'≥' if c['op'] == '>=' else '≤'} {c['bound']:g} "
              f"| {VERDICT[c['passed']]} |" for c in checks]
    lines += ["", "| images | as the requested character | as some character | nearest the photos "
              "| face-centre error vs the photo (px) | centre x corr. | width corr. |",
              "| --- | --- | --- | --- | --- | --- | --- |", *_probe_rows(p), ""]
    per = (p.get("target_g") or {}).get("per_character")
    if per:
        lines += ["Fine-tuned G samples per character: "
                  + ", ".join(f"{k} {_num(v, 3)}" for k, v in per.items()) + ".", ""]
    return lines


def render(m: dict, sheets: dict[str, str]) -> str:
    """report.md's text."""
    lines = ["# toonmix demo report", ""]
    if m["detector_is_public_inception"]:
        lines += [f"FID/KID use the TF Inception from `{m['detector']}`.", ""]
    else:
        lines += ["**FID/KID here use an untrained Inception** (random weights, seed 0): they compare this",
                  "run's stages with each other and are not comparable with any published FID. Put",
                  "`pt_inception-2015-12-05-6726825d.pth` or `inception-2015-12-05.pt` in `weights/` (or",
                  "`--weights-dir`) and delete `stages/fid.json` to measure the standard one.",
                  ""]
    lines += _probe_section(m)
    lines += ["## Stages", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {_num(v, 4)} |" for k, v in m["stage_seconds"].items()]
    lines += [f"| total | {_num(m['total_seconds'], 4)} |", ""]
    fid = _fid_rows(m)
    lines += ["## FID / KID", ""]
    lines += (["| what | FID | KID | real / generated images |", "| --- | --- | --- | --- |", *fid]
              if fid else ["(no FID measured yet: the fid stage has not run)"])
    enc = _encoder_rows(m)
    lines += ["", "## Encoders (reconstruction per refinement pass)", ""]
    lines += (["| encoder | pass | L2 | MS-SSIM |", "| --- | --- | --- | --- |", *enc]
              if enc else ["(no encoder metrics yet)"])
    captions = {"data": "Demo data: photo-like faces (top) and cartoon characters (bottom), 32 px.",
                "gan_source": "Source generator (fixed seeds, latest tick).",
                "gan_target": "Fine-tuned generator, same seeds.",
                "encoder_source": "Photo encoder: input, then each refinement pass.",
                "encoder_target": "Character encoder into G_swap: input, then each pass."}
    lines += ["", "## Images", ""]
    for key, name in sheets.items():
        caption = captions.get(key) or (f"Cartoonized as {key.split('/')[1]}: photo, reconstruction, CDSM, "
                                        "toonify, W+ mixing, then the character's references.")
        lines += [f"{caption}", "", f"![{key}](sheets/{name})", ""]
    return "\n".join(lines)


def write_report(out: Path, records: dict[str, dict], detector: str) -> None:
    """Writes <out>/sheets/, <out>/metrics.json and <out>/report.md (each atomically)."""
    sheets = make_sheets(out)
    m = collect(out, records, detector)
    for name, text in (("metrics.json", json.dumps(m, indent=1, sort_keys=True) + "\n"),
                       ("report.md", render(m, sheets) + "\n")):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
