"""Shard writing, face cropping and alignment, the streaming loader and the crawler.

This folder shadows the Hugging Face ``datasets`` package when both are
importable from the repository root; the project does not use that package.
"""
