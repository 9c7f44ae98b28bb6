"""StyleGAN2 networks (single-device; no accelerate, no torch.distributed).

- ``generator``: ``Generator`` / ``GeneratorConfig`` (rosinality state-dict layout).
- ``discriminator``: residual ``Discriminator`` with FreezeD in both conventions.
- ``stylespace``: per-layer styles s = A(w), traced from the generator's wiring.
- ``swap``: layer swap and soft blending of two generators.
- ``layers``: the shared building blocks.
"""

from .discriminator import Discriminator, DiscriminatorConfig
from .generator import Generator, GeneratorConfig, GeneratorOutput
from .stylespace import StyleLayer, style_layers, synthesize, ws_to_styles
from .swap import blend, layer_swap

__all__ = [
    "Discriminator", "DiscriminatorConfig", "Generator", "GeneratorConfig", "GeneratorOutput",
    "StyleLayer", "blend", "layer_swap", "style_layers", "synthesize", "ws_to_styles",
]
