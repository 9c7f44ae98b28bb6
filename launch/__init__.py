"""Command-line entry points (``python -m launch.<name> --help``) and their configs."""
