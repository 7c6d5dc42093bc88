"""steps/core/processes.py: a child's whole process group ends with it (issue 10: a retrain orphaned by a failed test
loaded the machine for every later test), and waits are for conditions, failing at once when a process dies."""
from __future__ import annotations

import subprocess
import sys

import pytest

from sentimentops.steps.core.processes import ProcessGroups, alive, group_alive, run, spawn, stop, wait_for

# A parent that starts a grandchild in its group and waits (bounded); the grandchild, once set up, prints its pid
# on the stdout it shares with the parent.
GRANDCHILD = "import os, time; print(os.getpid(), flush=True); time.sleep(120)"
PARENT = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {GRANDCHILD!r}])
time.sleep(120)
"""
# The leader exits on SIGTERM at once, and its child ignores SIGTERM: the group lives on without its leader, and
# only the SIGKILL after the grace period ends it.
DESERTER = PARENT.replace(
    "import subprocess, sys, time",
    "import signal, subprocess, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))").replace(
    "import os, time;", "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);")


def grandchild_of(proc: subprocess.Popen) -> int:
    return int(proc.stdout.readline())


@pytest.mark.parametrize("script", [PARENT, DESERTER], ids=["plain", "leader-exits-child-ignores-sigterm"])
def test_stop_ends_the_grandchildren_too(script):
    proc = spawn([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    grandchild = grandchild_of(proc)
    assert alive(grandchild) and group_alive(proc.pid)
    stop(proc, grace_s=2)
    assert not alive(grandchild) and not group_alive(proc.pid)


def test_stop_by_pid_of_a_group_leader():
    proc = spawn([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    grandchild = grandchild_of(proc)
    stop(proc.pid, grace_s=10)
    assert not alive(grandchild) and not alive(proc.pid)


def test_run_kills_the_group_on_a_timeout(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    script = PARENT.replace("print(os.getpid(), flush=True)", f'open("{pid_file}", "w").write(str(os.getpid()))')
    with pytest.raises(subprocess.TimeoutExpired):
        run([sys.executable, "-c", script], timeout=3)
    assert not alive(int(pid_file.read_text()))


def test_run_returns_output_and_exit_code():
    done = run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
               timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_wait_for_fails_at_once_with_the_log_of_a_process_that_died(tmp_path):
    with ProcessGroups() as children:
        proc = children.start([sys.executable, "-c", "print('bad config'); raise SystemExit(2)"],
                              log=tmp_path / "server.log")
        with pytest.raises(RuntimeError, match=r"(?s)the server ready: .* exited \(2\); its log ends:\nbad config"):
            wait_for(lambda: False, 300, "the server ready", [proc])


def test_wait_for_returns_the_value_and_bounds_a_hang():
    values = iter([None, 0, "ready"])
    assert wait_for(lambda: next(values), 60, "a value", poll_s=0.01) == "ready"
    with pytest.raises(TimeoutError, match="waiting for nothing"):
        wait_for(lambda: None, 0.1, "nothing", poll_s=0.01)


def test_process_groups_stop_everything_they_started():
    with ProcessGroups(grace_s=10) as children:
        procs = [children.start([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True) for _ in range(2)]
        grandchildren = [grandchild_of(p) for p in procs]
    assert not any(alive(pid) for pid in grandchildren + [p.pid for p in procs])
