"""Pinning the bot to CPUs (`cpus`): every thread, before and after, and one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from bot import cpus
from bot.config import ConfigError

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's"
)


def test_no_cpus_leaves_the_process_where_it_was() -> None:
    before = os.sched_getaffinity(0)

    cpus.pin([])

    assert os.sched_getaffinity(0) == before


def test_a_cpu_the_process_may_not_use_is_refused_in_one_line_naming_the_ones_it_may() -> None:
    allowed = os.sched_getaffinity(0)
    absent = max(allowed) + 1

    with pytest.raises(ConfigError) as refused:
        cpus.pin([absent])

    message = str(refused.value)
    assert "\n" not in message
    assert f"cpus = [{absent}]" in message
    assert f"CPU {absent} is not one this process may use" in message
    assert str(min(allowed)) in message
    assert "or [] to let the system choose" in message
    assert os.sched_getaffinity(0) == allowed  # nothing was pinned


@pytest.mark.parametrize(
    ("given", "text"),
    [({3}, "CPU 3"), ({0, 1}, "CPUs 0-1"), ({0, 1, 2, 5, 7, 8}, "CPUs 0-2, 5, 7-8")],
)
def test_cpu_sets_are_named_as_ranges(given: set[int], text: str) -> None:
    assert cpus._ranges(given) == text


def test_threads_running_before_and_started_after_the_pin_all_run_on_its_cpus() -> None:
    """In a process of its own: pinning the test runner would slow every other test."""
    target = max(os.sched_getaffinity(0))
    script = textwrap.dedent(
        f"""
        import json, os, threading
        from bot import cpus

        release = threading.Event()
        early = threading.Thread(target=release.wait)
        early.start()
        cpus.pin([{target}])
        late = threading.Thread(target=release.wait)
        late.start()
        tasks = sorted(os.listdir("/proc/self/task"))
        seen = {{task: sorted(os.sched_getaffinity(int(task))) for task in tasks}}
        release.set()
        print(json.dumps(seen))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )

    seen = json.loads(result.stdout)
    assert len(seen) >= 3  # the main thread, the one from before and the one from after
    assert all(affinity == [target] for affinity in seen.values()), seen
