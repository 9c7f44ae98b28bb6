"""The crafted-file harness measures what the tests and benchmarks/untrusted.py rely on."""

from __future__ import annotations

import torch  # noqa: F401  (this process is large: its size must not show up in the command's peak)

from tests.untrusted_harness import Attack, run_attack


def test_peak_memory_is_the_commands_own():
    small = run_attack("small", Attack(["timeit", "-n1", "-r1", "pass"], expect_exit=0))
    big = run_attack("big", Attack(["timeit", "-n1", "-r1", "x = bytearray(300 << 20)"], expect_exit=0))
    assert small.exit_code == 0 and big.exit_code == 0
    assert small.peak_mb < 60  # a bare interpreter, not this test process with torch loaded
    assert 300 < big.peak_mb < 360


def test_a_hung_command_is_killed_at_its_timeout_and_counted_as_hung():
    r = run_attack("hang", Attack(["timeit", "-n1", "-r1", "import time; time.sleep(60)"], timeout=2))
    assert r.exit_code is None and r.seconds < 10
    assert not r.refused_cleanly(Attack(["timeit"]))


def test_a_refusal_with_a_traceback_is_not_clean():
    r = run_attack("crash", Attack(["timeit", "-n1", "-r1", "import os; os._exit(2)"]))
    assert r.exit_code == 2 and r.refused_cleanly(Attack(["timeit"]))
    r = run_attack("trace", Attack(["timeit", "-n1", "-r1", "1/0"]))
    assert r.exit_code == 1 and "Traceback" in r.stderr and not r.refused_cleanly(Attack(["timeit"], expect_exit=1))
