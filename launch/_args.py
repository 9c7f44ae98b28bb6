"""Argument types shared by the command-line entry points."""

from __future__ import annotations

import argparse


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
