"""ReStyle's checkpoint format: ``{"state_dict": {encoder.*, decoder.*}, "opts": {...}, "latent_avg"}``.

ReStyle's ``psp.load_weights`` reads ``encoder.*`` and ``decoder.*`` (rosinality
generator keys) with strict loading and ``latent_avg`` as [n_styles, 512];
``opts["encoder_type"]`` names the body and ``opts["output_size"]`` the
generator resolution. Exports add ``opts["toonmix_encoder"]`` (the full
architecture, for narrow test-size encoders) and ReStyle's own option names
for what this system trained, so ReStyle's scripts can read the file.

ReStyle's ``pSp`` builds only one layout whatever the file holds (a full-width
body, 512-wide style blocks on the 16x16 map of a 256 px input, and
``Generator(output_size, 512, 8, channel_multiplier=2)``); an export of any
other layout records why in ``opts["toonmix_not_restyle_buildable"]`` and
warns, so it is not mistaken for a ReStyle model. Files whose ``dataset_type``
ReStyle runs at 192x256 (its car models) are refused: toonmix inverts square
images only.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from trainer.model_io import CheckpointError
from trainer.model_io.atomic import torch_save_atomic
from trainer.model_io.build import build_generator, generator_config
from trainer.model_io.safe_pickle import torch_load
from trainer.networks import GeneratorConfig, irse
from trainer.networks.encoders import RESTYLE_TYPES, Encoder, EncoderConfig
from trainer.networks.restyle import ReStyle
from trainer.networks.weights import load_into

BACKBONES = {v: k for k, v in RESTYLE_TYPES.items()}

NOT_BUILDABLE = "toonmix_not_restyle_buildable"
"""opts key of an export ReStyle's own code cannot build or run: the list of reasons."""
RESTYLE_GENERATOR = {"style_dim": 512, "n_mlp": 8, "channel_multiplier": 2.0, "channel_max": 512}
"""The generator ReStyle's pSp builds (rosinality's channel table at multiplier 2); a decoder that
differs in any of these fails ReStyle's strict ``load_state_dict``."""
SQUARE_DATASET_TYPES = ("ffhq_encode", "church_encode", "horse_encode", "afhq_wild_encode", "toonify")
"""ReStyle's dataset types that resize inputs to 256x256 and invert the whole generator image."""


def restyle_build_problems(enc: EncoderConfig, dec: GeneratorConfig) -> list[str]:
    """Why ReStyle's own code cannot build or run this encoder and generator ([]: it can)."""
    out = []
    if not enc.public:
        units = "" if enc.backbone == "resnet34" else f", units {list(enc.units)}"
        public = "" if enc.backbone == "resnet34" else f", units {list(irse.UNITS[50])}"
        out.append(f"{enc.backbone} body width {enc.width:g}{units} (ReStyle: width 1{public})")
    if enc.input_size != 256:
        out.append(f"encoder input {enc.input_size}px (ReStyle: 256, its style blocks expect a 16x16 map)")
    if enc.input_nc != 6:
        out.append(f"encoder input_nc {enc.input_nc} (ReStyle's inference feeds 6: image and reconstruction)")
    for key, want in RESTYLE_GENERATOR.items():
        if getattr(dec, key) != want:
            out.append(f"generator {key} {getattr(dec, key):g} (ReStyle: {want:g})")
    if len(dec.blur_kernel) != 4:
        out.append(f"generator blur_kernel of {len(dec.blur_kernel)} taps (ReStyle: 4)")
    return out


def restyle_dict(net: ReStyle, opts: dict | None = None) -> dict:
    """The dict ReStyle's ``torch.load`` expects (plain Python values and tensors only)."""
    enc = net.encoder.cfg
    sd = {f"encoder.{k}": v.detach().cpu().clone() for k, v in net.encoder.state_dict().items()}
    sd.update({f"decoder.{k}": v.detach().cpu().clone() for k, v in net.decoder.state_dict().items() if k != "w_avg"})
    # dataset_type and device: ReStyle's inference scripts read them from the checkpoint's opts
    # ("ffhq_encode": resize to 256 and normalise, right for faces and cartoons alike).
    base = {"encoder_type": RESTYLE_TYPES[enc.backbone], "input_nc": enc.input_nc, "output_size": net.decoder.size,
            "start_from_latent_avg": True, "dataset_type": "ffhq_encode", "device": "cuda:0",
            "toonmix_encoder": enc.to_dict(),
            "toonmix_decoder": net.decoder.cfg.to_dict()}
    merged = {**base, **(opts or {})}
    merged.pop(NOT_BUILDABLE, None)  # opts copied from another file must not carry its verdict over
    problems = restyle_build_problems(enc, net.decoder.cfg)
    if problems:
        merged[NOT_BUILDABLE] = problems
    return {"state_dict": sd, "opts": merged, "latent_avg": net.latent_avg.detach().cpu().clone()}


def save_restyle(path: str | Path, net: ReStyle, opts: dict | None = None) -> Path:
    """Writes ``restyle_dict`` atomically (temporary file, then rename); warns when ReStyle's
    own code cannot build the result (toonmix still loads it)."""
    obj = restyle_dict(net, opts)
    problems = obj["opts"].get(NOT_BUILDABLE)
    if problems:
        # stacklevel 2: the warning names the caller (the training loop, a script), not this module
        warnings.warn(f"{path}: ReStyle's own code cannot build this model ({'; '.join(problems)}); "
                      f"toonmix loads it, and opts[{NOT_BUILDABLE!r}] records why: do not ship it as a "
                      "ReStyle model", stacklevel=2)
    return torch_save_atomic(obj, path)


def check_dataset_type(opts: dict, path: str | Path) -> None:
    """Refuses a file whose ``dataset_type`` ReStyle runs on non-square images.

    ReStyle runs ``cars_encode`` models at 192x256: inputs resized to 192x256, and
    the average image and every reconstruction cropped to the middle rows of the
    generator's square output (32:224 at 256 px) before they reach the encoder.
    The encoder input, the average image and the image pipeline here are square,
    so such a file would be run on differently framed images and give wrong
    latents without an error. Types that ReStyle does not list (forks add their
    own) are taken as square unless ``cars`` is in the name, as in ReStyle's
    descendants that test ``"cars" in dataset_type``.
    """
    kind = opts.get("dataset_type")
    if kind is None or kind in SQUARE_DATASET_TYPES:
        return
    if "cars" in str(kind):
        raise CheckpointError(f"{path}: dataset_type {kind!r} is not supported: ReStyle runs these models on "
                              "192x256 images with a cropped average image, toonmix inverts square images only "
                              f"(supported dataset_type: {', '.join(SQUARE_DATASET_TYPES)})")


def encoder_config(opts: dict, sd: dict[str, torch.Tensor], path: str | Path) -> EncoderConfig:
    """The encoder architecture a ReStyle checkpoint holds (ours record it; ReStyle's imply it)."""
    if isinstance(opts.get("toonmix_encoder"), dict):
        return EncoderConfig(**opts["toonmix_encoder"])
    kind = opts.get("encoder_type")
    if kind not in BACKBONES:
        raise CheckpointError(f"{path}: encoder_type {kind!r} is not a ReStyle-pSp encoder "
                              f"(supported: {sorted(BACKBONES)}; e4e-style encoders are not)")
    style = sd.get("encoder.styles.0.linear.weight")
    n_styles = len({k.split(".")[2] for k in sd if k.startswith("encoder.styles.")})
    if style is None or not n_styles:
        raise CheckpointError(f"{path}: no encoder.styles.* weights")
    return EncoderConfig(backbone=BACKBONES[kind], n_styles=n_styles, style_dim=style.shape[0],
                         input_nc=int(opts.get("input_nc", 6)))


def load_restyle(path: str | Path) -> tuple[ReStyle, dict]:
    """A ReStyle network (encoder, decoder, latent_avg) and the file's opts."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such encoder checkpoint")
    obj = torch_load(path)
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise CheckpointError(f"{path}: not a ReStyle checkpoint (expected state_dict, opts, latent_avg; "
                              f"found {list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__})")
    opts = obj.get("opts") or {}
    opts = vars(opts) if isinstance(opts, argparse.Namespace) else dict(opts)
    check_dataset_type(opts, path)
    sd = obj["state_dict"]
    enc_sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    dec_sd = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    if not dec_sd:
        raise CheckpointError(f"{path}: holds no decoder.* weights")
    latent_avg = obj.get("latent_avg")
    if latent_avg is None:
        raise CheckpointError(f"{path}: holds no latent_avg (ReStyle starts every inversion from it)")
    enc = Encoder(encoder_config(opts, sd, path))
    load_into(enc, enc_sd, "the encoder", path)
    known = opts.get("toonmix_decoder") or {}
    G = build_generator(dec_sd, generator_config(dec_sd, **known), f"{path} [decoder]",
                        latent_avg.reshape(-1, latent_avg.shape[-1])[0])
    if int(opts.get("output_size", G.size)) != G.size:
        raise CheckpointError(f"{path}: opts.output_size {opts['output_size']} but the decoder is {G.size}px")
    try:
        net = ReStyle(enc, G, latent_avg.float())
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    return net.eval(), opts


def load_encoder(spec: str | Path) -> ReStyle:
    """A trained encoder from a ReStyle-format file or one of our training checkpoints
    (a ``ckpt-*`` folder, or ``<checkpoints>/latest``); single process, CPU, eval mode."""
    from trainer.networks import Generator
    from trainer.run.checkpoint import CheckpointManager
    from trainer.run.start import read_meta

    spec = str(spec).rstrip("/")
    if Path(spec).is_file():
        return load_restyle(spec)[0]
    if not Path(spec).exists() and not spec.endswith("latest") and "://" not in spec:
        raise CheckpointError(f"{spec}: no such encoder; expected encoder-restyle.pt from `launch.train_encoder`, "
                              "ReStyle's own .pt, or a training checkpoint folder (ckpt-* or <checkpoints>/latest)")
    root = spec[: -len("latest")].rstrip("/") or "." if spec.endswith("latest") else spec.rpartition("/")[0] or "."
    manager = CheckpointManager(root)
    path = manager.resolve("latest" if spec.endswith("latest") else spec)
    meta = read_meta(path, ("config", "g_config", "enc_config"))
    G = Generator(GeneratorConfig(**meta["g_config"]))
    net = ReStyle(Encoder(EncoderConfig(**meta["enc_config"])), G, torch.zeros(G.n_latent, G.style_dim))
    manager.load(path, {"net": net})  # avg_image and latent_avg included
    net.decoder.w_avg.copy_(net.latent_avg[0])
    return net.eval()
