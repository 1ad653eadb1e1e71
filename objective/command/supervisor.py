"""The group leader of every command trial: a tiny supervisor between the sweep and the user's command.

Run as a script (``python -I supervisor.py PARENT_PID GRACE_S COMMAND...``; objective/command/
process_group.py starts it in a new session, so its pid is the group id). Standard library
only, and no project import: it must start fast and work whatever the trial's PYTHONPATH is
(``-I`` keeps the script's folder and PYTHON* variables out of its sys.path; the command it
starts still gets the full environment).

Why it exists: the sweep process may die by SIGKILL (Ray killing a trial actor), which runs no
Python cleanup. The supervisor asks Linux to SIGTERM it when the thread that started it dies
(``prctl(PR_SET_PDEATHSIG)``, set here rather than in a ``preexec_fn``, which is unsafe in
threaded callers such as Ray workers). Whenever it stops, by a signal or because the command
exited, it clears the rest of its group: SIGTERM, then SIGKILL after the grace period. So an
8-GPU verl job never outlives the sweep. Its exit status mirrors the command's (a command
killed by signal N makes the supervisor die of signal N too).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_POLL_S = 0.1
_CLEAR_POLL_S = 0.02
_NORMAL_EXIT_GRACE_CAP_S = 2.0  # leftovers after a normal exit get at most this long


def group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) pids of group ``pgid`` other than ourselves, from /proc; None without /proc."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    out = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            out.append(int(entry))
    return out


def clear_group(grace_s: float, child: subprocess.Popen | None) -> None:
    """SIGTERM our whole group, wait up to ``grace_s`` for it to empty, then SIGKILL what is left."""
    me = os.getpid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group-wide SIGTERM reaches us too
    try:
        os.killpg(me, signal.SIGTERM)
    except OSError:
        pass
    end = time.monotonic() + grace_s
    while time.monotonic() < end:
        if child is not None:
            child.poll()  # reap it, or it stays a zombie member of the group
        left = group_members(me)
        if left is not None and not left:
            return
        time.sleep(_CLEAR_POLL_S)
    left = group_members(me)
    if left is None:
        os.killpg(me, signal.SIGKILL)  # no /proc: the whole group, ourselves included
    for pid in left or []:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def main(argv: list[str]) -> int:
    parent, grace_s, command = int(argv[0]), float(argv[1]), argv[2:]
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    signal.signal(signal.SIGHUP, lambda s, f: stop.append(s))
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except Exception:  # noqa: BLE001 - not Linux: the sweep's own exit hooks still clear the group
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        stop.append(signal.SIGTERM)

    child = None
    if not stop:
        try:
            child = subprocess.Popen(command)
        except OSError as exc:
            sys.stderr.write(f"noisesweep: cannot start {command[0]!r}: {exc}\n")
            return 127
    rc = None
    while not stop and rc is None:
        assert child is not None
        try:
            rc = child.wait(timeout=_POLL_S)
        except subprocess.TimeoutExpired:
            pass
    if stop:
        clear_group(grace_s, child)
        if child is not None:
            child.poll()
        return 128 + stop[0]
    assert rc is not None
    clear_group(min(grace_s, _NORMAL_EXIT_GRACE_CAP_S), child)
    if rc < 0:  # die of the same signal, so the caller sees "killed by SIGx"
        try:
            signal.signal(-rc, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL/SIGSTOP cannot be handled: they already act by default
        os.kill(os.getpid(), -rc)
        time.sleep(1)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
