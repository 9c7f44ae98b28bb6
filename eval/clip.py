"""CLIP text-image similarity from a local folder in Hugging Face's public layout.

The model is ``transformers``' ``CLIPModel`` and ``CLIPTokenizer``, read with
``local_files_only=True`` (nothing is downloaded at run time, no code from the
folder runs), for example OpenAI's ViT-B/32 (``openai/clip-vit-base-patch32``:
config.json, model.safetensors, vocab.json, merges.txt, and optionally
preprocessor_config.json and the tokenizer's json files). docs/weights.md says
where to get it.

Images in [-1, 1] are mapped to [0, 1], resized to the model's input size with
antialiased bilinear resampling (differentiable, as the optimisation needs),
and normalised with the preprocessor's mean and std (CLIP's own when the folder
has no preprocessor_config.json). StyleCLIP's optimisation feeds the
generator's [-1, 1] output pooled to 224 px without that normalisation; ours
is what CLIP was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainer.networks.weights import WeightsError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SOURCE = ("Hugging Face's openai/clip-vit-base-patch32 (config.json, model.safetensors, vocab.json, "
          "merges.txt; see docs/weights.md)")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def missing_files(folder: Path) -> list[str]:
    """What a CLIP folder lacks: the config, the weights (either format), the tokenizer's files."""
    lack = [f for f in ("config.json", "vocab.json", "merges.txt") if not (folder / f).is_file()]
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        lack.append(" or ".join(WEIGHT_FILES))
    return lack


def _features(out) -> torch.Tensor:
    """The projected features of ``get_*_features`` (a tensor before transformers 5, an output after)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class CLIPScorer(nn.Module):
    """Unit-norm CLIP embeddings of texts and of generator images; frozen."""

    def __init__(self, model: nn.Module, tokenizer, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.size = int(model.config.vision_config.image_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    @classmethod
    def from_folder(cls, path: str | Path | None) -> CLIPScorer:
        """Loads the folder; a missing folder or file is a ``WeightsError`` naming it and its source."""
        if not path:
            raise WeightsError(f"no CLIP folder given (--clip DIR): get {SOURCE}")
        folder = Path(path)
        if not folder.is_dir():
            raise WeightsError(f"{folder}: no such CLIP folder; get {SOURCE}")
        lack = missing_files(folder)
        if lack:
            raise WeightsError(f"{folder}: the CLIP folder lacks {', '.join(lack)}; get {SOURCE}")
        for f in WEIGHT_FILES:
            if (folder / f).is_file() and (folder / f).read_bytes()[:24].startswith(b"version https://git-lfs"):
                raise WeightsError(f"{folder / f} is a Git LFS pointer, not the weights: run `git lfs pull` in "
                                   f"{folder} or download the file itself")
        from transformers import CLIPModel, CLIPTokenizer

        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
            tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as e:  # a damaged file fails in safetensors, torch or json alike: the folder's fault
            raise WeightsError(f"{folder}: not a readable CLIP model ({type(e).__name__}: {e})") from e
        mean, std = CLIP_MEAN, CLIP_STD
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        return cls(model, tokenizer, mean, std)

    @torch.no_grad()
    def text(self, prompts: list[str]) -> torch.Tensor:
        """[T, E] unit-norm text embeddings."""
        if not prompts or any(not p.strip() for p in prompts):
            raise ValueError("an empty prompt: say what the edit should look like")
        batch = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt",
                               max_length=int(self.model.config.text_config.max_position_embeddings))
        batch = {k: v.to(self.mean.device) for k, v in batch.items()}
        return F.normalize(_features(self.model.get_text_features(**batch)).float(), dim=-1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> CLIP's normalised input at its size."""
        x = (images.float() + 1) / 2
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def image(self, images: torch.Tensor) -> torch.Tensor:
        """[N, E] unit-norm image embeddings (differentiable with respect to ``images``)."""
        return F.normalize(_features(self.model.get_image_features(pixel_values=self.preprocess(images))).float(),
                           dim=-1)

    def similarity(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[N] cosine similarity of each image with the one text embedding ``text`` [1, E] (or [N, E])."""
        return (self.image(images) * text).sum(-1)
