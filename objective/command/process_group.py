"""Process groups of command trials: start under the supervisor, kill the whole group, clean up at exit.

Shutdown safety (why several layers): a trial must not leave an 8-GPU verl job running after
the sweep is gone.

- ``with``-scope: `child_group` kills the group in a ``finally`` path, so an exception in the
  calling thread (``KeyboardInterrupt`` from Ctrl-C included) kills it before propagating.
- SIGTERM: when called from the main thread, `install_shutdown_hooks` installs a handler once
  (only if SIGTERM still has its default action) that kills every live child group and then
  re-delivers the signal with the default action, so the process still dies "by SIGTERM". A
  handler the application installed itself is left alone (not replaced, not wrapped): when it
  exits the process, the exit hooks below clear the groups.
- interpreter exit: live groups are killed from threading's pre-join exit hook (so a trial
  running in a non-daemon thread cannot block exit forever), with ``atexit`` as a fallback.
- parent killed with SIGKILL (e.g. Ray killing the trial actor): the command runs under
  `supervisor.py` (the group leader), which the kernel signals when the thread that started it
  dies (Linux ``PR_SET_PDEATHSIG``); it then clears the group the same way. It also clears
  leftovers of the group as soon as the command exits normally.
  Processes that left the group themselves (``setsid``, a Ray cluster started with
  ``ray start``) cannot be reached; Ray workers started by the trainer's own ``ray.init``
  fate-share with it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

# The group leader's script (a real file, run by path with `python -I`: see its docstring).
SUPERVISOR = Path(__file__).with_name("supervisor.py")

_REGISTRY_LOCK = threading.RLock()  # re-entrant: the SIGTERM handler runs on the main thread
_LIVE_GROUPS: dict[int, float] = {}  # pgid -> kill grace seconds
_HANDLERS_INSTALLED = False
_SIGNAL_INSTALLED = False
_EXIT_GRACE_CAP_S = 5.0


def _group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) pids in a process group, from /proc; None where /proc is unavailable."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies awaiting reaping count as dead)."""
    members = _group_members(pgid)
    if members is not None:
        return bool(members)
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(pgid: int, grace_s: float, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the whole group, SIGKILL what is left after ``grace_s``; reap ``proc`` if given."""

    def reap() -> None:
        if proc is not None:
            proc.poll()

    reap()
    if not group_alive(pgid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        reap()
        if not group_alive(pgid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        reap()
        if not group_alive(pgid):
            return
        time.sleep(0.02)


def kill_all_groups(grace_cap_s: float = _EXIT_GRACE_CAP_S) -> None:
    """Kill every child group still registered (sweep shutdown)."""
    with _REGISTRY_LOCK:
        groups = dict(_LIVE_GROUPS)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + min(max(groups.values(), default=0.0), grace_cap_s)
    while time.monotonic() < deadline and any(group_alive(p) for p in groups):
        time.sleep(0.02)
    for pgid in groups:
        if group_alive(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
    with _REGISTRY_LOCK:
        for pgid in groups:
            _LIVE_GROUPS.pop(pgid, None)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Kill the child groups, then die of the signal as the default action would."""
    kill_all_groups()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_shutdown_hooks() -> None:
    """Once per process: exit hooks, and a SIGTERM handler if SIGTERM has its default action."""
    global _HANDLERS_INSTALLED, _SIGNAL_INSTALLED
    with _REGISTRY_LOCK:
        if not _HANDLERS_INSTALLED:
            _HANDLERS_INSTALLED = True
            register = getattr(threading, "_register_atexit", None)  # runs before threads are joined
            if register is not None:
                with contextlib.suppress(RuntimeError):
                    register(kill_all_groups)
            atexit.register(kill_all_groups)
        if _SIGNAL_INSTALLED or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        _SIGNAL_INSTALLED = True
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def child_group(argv: list[str], *, cwd: str | None, env: dict[str, str], grace_s: float) -> Iterator[subprocess.Popen]:
    """Start argv in a new session; whatever happens in the body, kill the group on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-I", str(SUPERVISOR), str(os.getpid()), repr(float(grace_s)), *argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    pgid = proc.pid  # leader of its own new session and group
    with _REGISTRY_LOCK:
        _LIVE_GROUPS[pgid] = grace_s
    try:
        yield proc
    finally:
        try:
            kill_group(pgid, grace_s, proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        finally:
            with _REGISTRY_LOCK:
                _LIVE_GROUPS.pop(pgid, None)


