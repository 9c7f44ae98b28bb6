"""Triplet fine-tuning of a blended generator: configuration and the loop (``loop``)."""
