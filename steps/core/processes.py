"""Child processes that can be stopped whole: each is started in its own process group (a new session), and
stopping it signals the group, so whatever it started in turn (a runner's step, a server's workers) ends with it.

One definition for every place that starts long-lived children: the quickstart's predictor, the local rollout's
predictors/router/Prometheus, the drift webhook's retrain, and the test fixtures (which must never leave an
orphan loading the machine for the tests after them).
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Self, TypeVar

PROC = Path("/proc")
KILL_WAIT_S = 10.0  # after SIGKILL, how long stop() waits for the group to be gone
T = TypeVar("T")


def spawn(argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
    """`subprocess.Popen` in a new session: the child leads its own process group (pgid == pid)."""
    return subprocess.Popen(list(argv), start_new_session=True, **popen_kwargs)


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state, process group) from /proc/PID/stat, None when gone. Linux; the comm field may hold spaces."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[2])


def alive(pid: int | None) -> bool:
    """True while `pid` runs. A zombie counts as dead (and is reaped when it is our child): a process whose
    parent already exited stays a zombie where nothing reaps orphans, as in some containers."""
    if not pid:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except ChildProcessError:  # not our child
        pass
    if PROC.is_dir():
        state = _proc_state(pid)
        return state is not None and state[0] != "Z"
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process of the group `pgid` exists: a leader that exited can leave its
    children behind."""
    if PROC.is_dir():
        for entry in PROC.iterdir():
            if entry.name.isdigit() and (state := _proc_state(int(entry.name))) and state[1] == pgid \
                    and state[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:  # already gone
        pass


def stop(target: subprocess.Popen | int | None, grace_s: float = 15.0) -> int | None:
    """SIGTERM the process group started by `spawn` (a Popen or its pid), SIGKILL what is left after `grace_s`.

    Waits for the group itself, not only its leader: a leader that exits on SIGTERM before its children must not
    leave them running. Returns the leader's exit code when it is our child, else None."""
    if target is None:
        return None
    proc = target if isinstance(target, subprocess.Popen) else None
    pgid = proc.pid if proc is not None else int(target)  # type: ignore[arg-type]
    _signal_group(pgid, signal.SIGTERM)
    deadline, killed = time.monotonic() + grace_s, False
    while True:
        proc.poll() if proc is not None else alive(pgid)  # reap the leader when it is our child
        if not group_alive(pgid):
            break
        if time.monotonic() >= deadline:
            if killed:  # unkillable (a process in uninterruptible sleep): give up, do not hang the caller
                break
            _signal_group(pgid, signal.SIGKILL)  # delivered at once, but the processes take a moment to die
            deadline, killed = time.monotonic() + KILL_WAIT_S, True
        time.sleep(0.05)
    if proc is not None:
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            return None
    return None


def run(argv: Sequence[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run` whose time-out ends the child's whole process group, grandchildren included (the
    standard one kills the child alone). Output is captured as text unless `stdout`/`stderr` are given."""
    if "stdout" not in kwargs and "stderr" not in kwargs:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kwargs.setdefault("text", True)
    proc = spawn(argv, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # the time-out, or the test run interrupted: nothing of it may outlive us
        stop(proc, grace_s=5)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(check: Callable[[], T], timeout_s: float, what: str, procs: Iterable[subprocess.Popen] = (),
             poll_s: float = 0.2) -> T:
    """Poll `check` until it returns something truthy, and return that. Waits for a condition, not for time: the
    timeout only bounds a hang (TimeoutError), and a process in `procs` that exits meanwhile fails the wait at once
    (RuntimeError with the tail of its `log`, when it has one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if value := check():
            return value
        for proc in procs:
            if proc.poll() is not None:
                log = getattr(proc, "log", None)
                tail = log.read_text(errors="replace")[-2000:] if log is not None and log.is_file() else ""
                argv = [proc.args] if isinstance(proc.args, str | bytes) else list(proc.args)  # type: ignore[arg-type]
                raise RuntimeError(f"{what}: {shlex.join(map(str, argv[:4]))} exited ({proc.returncode})"
                                   + (f"; its log ends:\n{tail}" if tail else ""))
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


class ProcessGroups:
    """Children started through it are stopped, newest first, when it closes (a context manager for fixtures)."""

    def __init__(self, grace_s: float = 15.0) -> None:
        self.grace_s = grace_s
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: Sequence[str], log: Path | None = None, **popen_kwargs) -> subprocess.Popen:
        """Start `argv` in its own group; with `log`, its stdout and stderr go to that file (`proc.log`): a file,
        never a pipe nobody reads, which fills up and blocks a chatty server mid-run."""
        if log is None:
            proc = spawn(argv, **popen_kwargs)
        else:
            with log.open("w") as out:
                proc = spawn(argv, stdout=out, stderr=subprocess.STDOUT, **popen_kwargs)
            proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        while self.procs:
            stop(self.procs.pop(), self.grace_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
