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



@pytest.mark.parametrize("name", COMMANDS)
def test_options_pass_through_accelerate_and_torchrun(name):
    from accelerate.commands.launch import launch_command_parser
    from torch.distributed import run as torchrun

    ours = sorted(o for a in importlib.import_module(f"launch.{name}").build_parser()._actions
                  for o in a.option_strings if o.startswith("--") and o != "--help")
    # torchrun resolves abbreviations across the whole command line: an option of ours that
    # begins one of its options ("--num" of "--numa-binding") stops it before our code runs.
    theirs = {o for a in torchrun.get_args_parser()._actions for o in a.option_strings}
    assert not {o: sorted(t for t in theirs if t.startswith(o)) for o in ours if any(t.startswith(o) for t in theirs)}
    # accelerate hands everything after the module to it untouched.
    argv = [x for o in ours for x in (o, "1")]
    parsed = launch_command_parser().parse_args(["-m", f"launch.{name}", *argv])
    assert parsed.training_script_args == argv
