"""Errors of the data stage.

``Rejected`` marks one input that cannot become a training sample (a corrupt
image, a box outside the image, a crop that breaks a rule). Writers catch it,
count it in the manifest with its reason and go on; it never stops a run.
"""

from __future__ import annotations


class Rejected(Exception):
    """One input refused, with a short machine-readable ``reason`` and a detail.

    ``reason`` is a stable identifier (``"corrupt"``, ``"too_small"``,
    ``"blank_border"``...) that the manifest counts; ``detail`` is for people.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DataError(Exception):
    """A whole input (a CSV, a manifest, a shard list, a config) is unusable."""
