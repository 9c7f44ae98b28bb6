"""StyleGAN2 networks (single-device; no accelerate, no torch.distributed).

- ``generator``: ``Generator`` / ``GeneratorConfig`` (rosinality state-dict layout).
- ``discriminator``: residual ``Discriminator`` with FreezeD in both conventions.
- ``stylespace``: per-layer styles s = A(w), traced from the generator's wiring.
- ``swap``: layer swap and soft blending of two generators.
- ``layers``: the shared building blocks.

Loss and encoder networks with pretrained weight files, imported by module
path (not re-exported here: ``weights`` reads files through ``trainer.model_io``,
which imports this package):

- ``weights``: the public weight files, their hashes and clear errors.
- ``irse`` / ``resnet``: IR-SE (ArcFace) and torchvision-layout ResNets.
- ``lpips``: ``LPIPS`` v0.1 on AlexNet or VGG16.
- ``face_id``: ``FaceID``, ReStyle's identity features; ``moco``: ``MocoFeatures``.
- ``similarity``: ``similarity_loss`` shared by both.
"""

from .discriminator import Discriminator, DiscriminatorConfig
from .generator import Generator, GeneratorConfig, GeneratorOutput
from .stylespace import StyleLayer, style_layers, synthesize, ws_to_styles
from .swap import blend, g_swap, layer_swap

__all__ = [
    "Discriminator", "DiscriminatorConfig", "Generator", "GeneratorConfig", "GeneratorOutput",
    "StyleLayer", "blend", "g_swap", "layer_swap", "style_layers", "synthesize", "ws_to_styles",
]
