"""Argument types shared by the command-line entry points."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class UserError(SystemExit):
    """Exit status 2 that still reads as its message (for callers that catch it)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(message: str) -> NoReturn:
    """Ends a command with ``message`` on stderr and exit status 2."""
    print(message, file=sys.stderr)
    raise UserError(message)


def int_list(text: str) -> list[int]:
    """"0-7" / "1,5,9" / "0-3,10" -> list of ints (argparse type)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 0-7 or 1,5,9, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"no numbers in {text!r}")
    return out


def add_inversion_args(p: argparse.ArgumentParser, what: str) -> None:
    """The options every command that runs a trained encoder over images shares."""
    p.add_argument("--encoder", required=True, help="encoder-restyle.pt (or ReStyle's .pt) or a checkpoint folder")
    p.add_argument("--images", required=True, help=f"{what}: a folder of images, or a shard folder")
    p.add_argument("--iters", type=int, default=5, help="refinement passes (ReStyle: 5)")
    p.add_argument("--batch", type=int, default=8, help="images per forward")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def add_generator_args(p: argparse.ArgumentParser) -> None:
    """A generator, or G_swap of two: --ckpt, --g-target, --swap-res."""
    p.add_argument("--ckpt", required=True, help="generator checkpoint (rosinality .pt, NVlabs .pkl or ours)")
    p.add_argument("--g-target", help="use G_swap: --ckpt below --swap-res, this fine-tuned generator above")
    p.add_argument("--swap-res", type=int, default=32, help="with --g-target: G_swap's swap resolution")


def load_generator(args: argparse.Namespace, device):
    """The generator of add_generator_args' options, on ``device``, in eval mode."""
    from trainer.model_io import load_checkpoint

    G = load_checkpoint(args.ckpt).generator()
    if args.g_target:
        from trainer.networks.swap import g_swap

        G = g_swap(G, load_checkpoint(args.g_target).generator(), args.swap_res)
    return G.to(device).eval()


def add_video_args(p: argparse.ArgumentParser, what: str) -> None:
    """--video (``what`` it shows) and --video-format, shared by the commands that write videos."""
    p.add_argument("--video", action="store_true", help=f"also write <stem>.mp4 (or .gif) of {what}")
    p.add_argument("--video-format", choices=("mp4", "gif"), default="mp4",
                   help="mp4: H.264 through imageio-ffmpeg (GIF when it is not installed); gif")


def latents_from(G, seeds: list[int], files: list[str] | None, truncation: float, device):
    """W+ [N, n_latent, D]: the W/W+ latents in ``files`` (launch.project's .npz, an .npy)
    when given, else ``seeds`` mapped and truncated to ``truncation``; ValueError names a bad file."""
    import numpy as np
    import torch

    if files:
        ws = []
        for f in files:
            try:
                a = np.load(f)
                wplus = isinstance(a, np.lib.npyio.NpzFile)  # launch.project's .npz: always W+
                a = a["w"] if wplus else a
            except (OSError, ValueError, KeyError) as e:
                raise ValueError(f"{f}: cannot read a latent ({type(e).__name__}: {e})") from None
            a = torch.from_numpy(np.asarray(a, dtype=np.float32))
            if a.ndim == 0 or a.shape[-1] != G.style_dim:
                raise ValueError(f"{f}: latents of width {a.shape[-1] if a.ndim else 0}, the generator's W "
                                 f"has {G.style_dim}")
            if wplus and (a.ndim < 2 or a.shape[-2] != G.n_latent):
                raise ValueError(f"{f}: a W+ of {a.shape[-2] if a.ndim >= 2 else 1} entries; this "
                                 f"{G.size} px generator takes {G.n_latent}")
            a = a.reshape(-1, *a.shape[-2:]) if a.ndim >= 2 and a.shape[-2] == G.n_latent else a.reshape(-1, a.shape[-1])
            if len(a) == 0:
                raise ValueError(f"{f}: holds no latents")
            ws.append(a if a.ndim == 3 else G.broadcast(a))
        return torch.cat(ws).to(device)
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.style_dim) for s in seeds])).float()
    with torch.no_grad():
        return G.truncate(G.broadcast(G.mapping(z.to(device))), truncation)


CDSM_HELP = {
    "g-source": "the FFHQ (source) generator checkpoint",
    "g-target": "the fine-tuned (target) generator checkpoint",
    "encoder-source": "source (photo) encoder: file or checkpoint folder",
    "encoder-target": "target (character) encoder",
    "lut": "look-up table of the characters' latents",
    "swap-res": "G_swap takes the target's layers from here up (default 32)",
    "mix-index": "m: conv styles of W+ index < m come from the photo (CDSM: 6)",
    "noise-seed": "seed of the fixed noise maps (default 0)",
    "iters": "source encoder refinement passes (ReStyle: 5)",
}


def add_cdsm_args(p: argparse.ArgumentParser, **help_for: str) -> None:
    """The networks and CDSM settings that launch.cartoonize takes and launch.bundle packs, under
    the same names (``help_for``: a command's own help text, by flag name with "_" for "-")."""
    for flag, text in CDSM_HELP.items():
        kind = {"type": int} if flag in ("swap-res", "mix-index", "noise-seed", "iters") else {}
        p.add_argument(f"--{flag}", help=help_for.get(flag.replace("-", "_"), text), **kind)
    p.add_argument("--no-trgb-replace", action="store_true",
                   help="tRGB styles follow the W+ index rule instead of all coming from the character")


def add_lpips_args(p: argparse.ArgumentParser, default_net: str = "alex") -> None:
    """LPIPS weight options: the public files by name in --weights-dir, or each path alone."""
    import os

    p.add_argument("--weights-dir", default=os.environ.get("TOONMIX_WEIGHTS"),
                   help="folder with the public weight files under their names (default $TOONMIX_WEIGHTS)")
    p.add_argument("--lpips-net", choices=["alex", "vgg"], default=default_net, help="LPIPS feature network")
    p.add_argument("--lpips-backbone", default=None, help="alexnet-owt-7be5be79.pth / vgg16-397923af.pth")
    p.add_argument("--lpips-lin", default=None, help="the lpips package's alex.pth / vgg.pth")
    p.add_argument("--no-lpips", action="store_true", help="pixel L2 only (no LPIPS weights at hand)")
    p.add_argument("--no-check-hash", action="store_true", help="do not verify torchvision file hashes")


def inversion_device(args: argparse.Namespace):
    """The torch device for ``--device``, after checking --iters and --batch (None: an error was printed)."""
    import sys

    import torch

    if args.iters < 1 or args.batch < 1:
        print("error: --iters and --batch must be >= 1", file=sys.stderr)
        return None
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def run_on_every_rank(run, args: argparse.Namespace, errors: tuple[type[BaseException], ...]):
    """(dist, result) of ``run(args, dist)`` on every process; (dist, None) after a user error.

    Errors are exchanged before anyone goes on, so no rank waits in a collective for
    a peer that gave up; the main process prints the first one.
    """
    import sys

    from trainer.run.distributed import Dist

    dist = Dist()
    try:
        result, error = run(args, dist), None
    except errors as e:
        result, error = None, f"{type(e).__name__}: {e}"
    found = [e for e in dist.gather_objects(error) if e]
    if found and dist.is_main:
        print(f"error: {found[0]}", file=sys.stderr)
    return dist, (None if found else result)


def run_and_print(run, args: argparse.Namespace, errors: tuple[type[BaseException], ...]) -> int:
    """``run`` on every rank, then its result as one JSON line on the main process; exit 0, or 2 on a user error."""
    import json

    dist, result = run_on_every_rank(run, args, errors)
    if result is None:
        return 2
    if dist.is_main:
        print(json.dumps(result))
    return 0
