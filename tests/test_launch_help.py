"""Every command in launch/ answers --help, and the help names each of its options."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import launch

COMMANDS = sorted(m.name for m in pkgutil.iter_modules(launch.__path__) if not m.name.startswith("_"))


def test_every_command_is_covered():
    assert {"fid", "cartoonize", "generate", "invert", "train_gan", "train_encoder"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_lists_every_option(name, capsys):
    mod = importlib.import_module(f"launch.{name}")
    with pytest.raises(SystemExit) as exit_:
        mod.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:")
    parser = mod.build_parser()
    for action in parser._actions:
        for opt in action.option_strings:
            assert opt in text, f"launch.{name} --help does not mention {opt}"
