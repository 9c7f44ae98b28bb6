"""Errors raised by checkpoint readers and writers."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, truncated, corrupt or of an unknown format."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asking for a Python object outside the allow-list (it could run code)."""


class ArchitectureMismatch(CheckpointError):
    """A state dict that does not fit the architecture; lists every difference."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"{what}: state dict does not match the architecture"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}"
                         + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}"
                         + (" ..." if len(unexpected) > 20 else ""))
        for k, got, want in mismatched[:20]:
            lines.append(f"  shape mismatch {k}: checkpoint {list(got)} vs model {list(want)}")
        super().__init__("\n".join(lines))


class MbstdChangeError(CheckpointError):
    """A discriminator whose minibatch-stddev group a format cannot store: writing it
    would silently change the logits the file's readers compute."""

    def __init__(self, group: int, fixed: int, message: str):
        self.group, self.fixed = group, fixed
        super().__init__(message)


class FormatChangeWarning(UserWarning):
    """A write that was allowed to drop part of a network's configuration the format cannot hold."""
