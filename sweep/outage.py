"""Riding out a storage outage: hold the study writes, retry with backoff, say when it starts and ends.

Week-long sweeps share databases that restart. Without this, the first write that hits a dead
connection (a trial's intermediate value, say) raised inside a Ray Tune callback, Tune wrapped it
in a TuneError, and the cleanup hit the dead database again: the driver died with a misleading
"invalid data in the commit" line. Instead:

- `StorageGuard.submit(writes)` writes at once while the database answers; when a write fails
  for a connection reason (`is_outage_error`), that write and every later one are *held* in
  order, in the driver, and one line says the outage began.
- A background thread (the bridge's keeper) calls `try_flush` with exponential backoff; when
  the held writes go through, one line says the outage ended and how long it lasted.
- `blocking(fn)` retries a call that cannot be held (start-up bookkeeping, the closing ledger).
- Past the window (`outage_window_s`: NOISESWEEP_OUTAGE_S, the study's `storage_outage_s`,
  10 min by default) `expired` turns true: the runner stops Tune, `spool` saves the held
  writes to a local file, and `StorageUnavailable` is the one line the user sees (database
  named, password masked, how long it was unreachable). The next run `replay`s the file first,
  so results of trials that finished during the outage are not lost.

Writes are data (`HeldWrite`), not closures, so they can be spooled and replayed by another
process; the bridge supplies the function that applies one.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sweep.errors import UserError
from sweep.secrets import mask_url

OUTAGE_ENV = "NOISESWEEP_OUTAGE_S"
DEFAULT_OUTAGE_S = 600.0
SPOOL_NAME = "held-writes.jsonl"
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 5.0

T = TypeVar("T")


class StorageUnavailable(UserError):
    """The database stayed unreachable past the outage window (one line, password masked)."""


def outage_window_s(study_value: float | None = None) -> float:
    """NOISESWEEP_OUTAGE_S beats the study's `storage_outage_s` beats 600 s."""
    raw = os.environ.get(OUTAGE_ENV)
    if raw is not None and raw.strip():
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"{OUTAGE_ENV}={raw!r}: must be a number of seconds") from None
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{OUTAGE_ENV}={raw!r}: must be a number of seconds > 0")
        return value
    return float(study_value) if study_value is not None else DEFAULT_OUTAGE_S


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None)  # SQLAlchemy's DBAPIError keeps the driver's error here
        todo.extend(x for x in (e.__context__, e.__cause__, orig) if isinstance(x, BaseException))


def is_outage_error(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says the database connection is gone or refused.

    SQLAlchemy raises OperationalError/InterfaceError for refused, reset and terminated
    connections (psycopg's "server closed the connection unexpectedly", "terminating
    connection due to administrator command", sqlite's "database is locked") and marks a
    DBAPIError `connection_invalidated` when the pool drops the connection; Optuna wraps a
    failed commit in StorageInternalError with the SQLAlchemy error as its cause. Integrity
    and programming errors are real bugs and are not treated as outages.
    """
    import sqlalchemy.exc as sa

    for e in _chain(exc):
        if isinstance(e, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, sa.TimeoutError)):
            return True
        if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
    return False


def outage_reason(exc: BaseException, url: str) -> str:
    """The root cause in one short line, password masked (never Optuna's "invalid data" text)."""
    root = exc
    for e in _chain(exc):
        if type(e).__module__.split(".")[0] not in ("optuna", "sqlalchemy"):
            root = e  # the driver's own error (psycopg, sqlite3, socket)
            break
    text = str(root).strip().splitlines()[0] if str(root).strip() else ""
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    if "invalid data" in text or "Traceback" in text:
        text = ""
    name = type(root).__name__
    return f"{name}: {text[:200]}" if text else name


def _password(url: str) -> str | None:
    try:
        import sqlalchemy

        pw = sqlalchemy.engine.make_url(url).password
        return str(pw) if pw else None
    except Exception:  # noqa: BLE001 - a URL we cannot parse has no password to hide
        return None


def fmt_duration(seconds: float) -> str:
    """'20.4 s', '3m05s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


@dataclass
class HeldWrite:
    """One study write, as data: `kind` names what the bridge's applier does with `args`."""

    kind: str  # report | attr | tell | requeue | orphans | ledger
    number: int | None = None  # trial number (None for study-level writes)
    trial_id: int | None = None  # storage id of that trial
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), allow_nan=True)

    @classmethod
    def from_json(cls, line: str) -> HeldWrite:
        d = json.loads(line)
        return cls(kind=str(d["kind"]), number=d.get("number"), trial_id=d.get("trial_id"), args=dict(d.get("args") or {}))


Applier = Callable[[HeldWrite], Any]


class StorageGuard:
    """Holds study writes through an outage and says when it begins and ends (module docstring).

    Thread-safe: Tune's event loop submits, the keeper thread flushes. `clock` and `sleep` are
    injectable so the backoff can be tested without waiting.
    """

    def __init__(
        self,
        url: str,
        apply: Applier,
        *,
        window_s: float = DEFAULT_OUTAGE_S,
        say: Callable[[str], None] = lambda line: None,
        ping: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.apply = apply
        self.window_s = window_s
        self.say = say
        self.ping = ping
        self.clock = clock
        self.sleep = sleep
        self.pending: deque[HeldWrite] = deque()
        self.lock = threading.RLock()
        self.outage_since: float | None = None
        self.recovered_at: float | None = None
        self.expired = False
        self.outages = 0  # outages ridden out (ended) so far
        self._delay = FIRST_RETRY_S
        self._next_try = 0.0
        self._held_trials: set[int] = set()

    def bind(self, apply: Applier, *, ping: Callable[[], Any] | None = None) -> None:
        """Set how a write is applied and how the database is probed (once the study exists)."""
        self.apply = apply
        if ping is not None:
            self.ping = ping

    # ------------------------------------------------------------------ state
    @property
    def in_outage(self) -> bool:
        return self.outage_since is not None

    def ready(self) -> bool:
        """True when nothing is held and the database answered last time (no I/O here)."""
        with self.lock:
            return self.outage_since is None and not self.pending

    def recovered_within(self, seconds: float) -> bool:
        """True during an outage and for `seconds` after one (other drivers' beats are late too)."""
        with self.lock:
            if self.outage_since is not None:
                return True
            return self.recovered_at is not None and self.clock() - self.recovered_at < seconds

    def unreachable_s(self) -> float:
        with self.lock:
            return 0.0 if self.outage_since is None else self.clock() - self.outage_since

    def enter_outage(self, exc: BaseException) -> None:
        """Start (or continue) an outage; the first call prints the 'began' line."""
        with self.lock:
            if self.outage_since is not None:
                return
            self.outage_since = self.clock()
            self._delay = FIRST_RETRY_S
            self._next_try = self.outage_since + self._delay
        self.say(
            f"storage {mask_url(self.url)} unreachable ({outage_reason(exc, self.url)}); holding results "
            f"and retrying for up to {fmt_duration(self.window_s)}"
        )

    def _check_window(self) -> None:
        if self.outage_since is not None and self.clock() - self.outage_since > self.window_s:
            self.expired = True

    def exit_message(self, spooled: Path | None = None, held: int | None = None) -> str:
        held = len(self._held_trials) if held is None else held
        kept = ""
        if spooled is not None:
            kept = f"; {held} finished trial result(s) kept in {spooled} and written by the next run"
        return (
            f"storage {mask_url(self.url)} unreachable for {fmt_duration(self.unreachable_s())} "
            f"(outage window {fmt_duration(self.window_s)}: {OUTAGE_ENV} or the study's storage_outage_s){kept}; "
            "run the same command again to resume"
        )

    # ------------------------------------------------------------------ writing
    def submit(self, writes: Iterable[HeldWrite]) -> bool:
        """Write now, in order; from the first write that meets an outage on, hold them all.

        Returns True when everything was written now.
        """
        writes = list(writes)
        with self.lock:
            for i, w in enumerate(writes):
                if self.outage_since is not None or self.pending:
                    self._hold(writes[i:])
                    return False
                try:
                    self.apply(w)
                except Exception as exc:
                    if not is_outage_error(exc):
                        raise
                    self.enter_outage(exc)
                    self._hold(writes[i:])
                    return False
        return True

    def _hold(self, writes: list[HeldWrite]) -> None:
        self.pending.extend(writes)
        self._held_trials.update(w.number for w in writes if w.kind == "tell" and w.number is not None)

    def try_flush(self, *, force: bool = False) -> bool:
        """Retry the held writes when the backoff allows; True when nothing is held any more."""
        with self.lock:
            if self.outage_since is None and not self.pending:
                return True
            if not force and self.clock() < self._next_try:
                self._check_window()
                return False
            return self._attempt(self.ping if not self.pending else None)[0]

    def _attempt(self, probe: Callable[[], Any] | None) -> tuple[bool, Any]:
        """Write the held writes, then call `probe`; end the outage when all got through.

        (True, probe's result) on success; (False, None) when the database is still away (the
        backoff grows, the window is checked). A held write the database refuses for another
        reason is dropped with a line, so one bad write cannot hold the sweep forever.
        """
        try:
            while self.pending:
                try:
                    self.apply(self.pending[0])
                except Exception as exc:
                    if is_outage_error(exc):
                        raise
                    bad = self.pending.popleft()
                    self.say(f"dropped a held {bad.kind} of trial {bad.number} that the storage refused "
                             f"({outage_reason(exc, self.url)})")
                    continue
                self.pending.popleft()
            result = probe() if probe is not None else None
        except Exception as exc:
            if not is_outage_error(exc):
                raise
            if self.outage_since is None:
                self.enter_outage(exc)
            else:
                self._delay = min(self._delay * 2, MAX_RETRY_S)
            self._next_try = self.clock() + self._delay
            self._check_window()
            return False, None
        if self.outage_since is not None:
            lasted = self.clock() - self.outage_since
            held = len(self._held_trials)
            self.outage_since = None
            self.recovered_at = self.clock()
            self.outages += 1
            self._held_trials.clear()
            written = f"; wrote {held} trial result(s) held meanwhile" if held else ""
            self.say(f"storage {mask_url(self.url)} reachable again after {fmt_duration(lasted)}{written}")
        return True, result

    def blocking(self, fn: Callable[[], T]) -> T:
        """Call `fn` (held writes first) until it gets through; StorageUnavailable past the window.

        For calls that cannot be held: start-up bookkeeping, the closing ledger. `fn` itself
        probes the database, so no separate ping is needed.
        """
        while True:
            with self.lock:
                if self.expired:
                    raise StorageUnavailable(self.exit_message())
                wait = self._next_try - self.clock() if self.outage_since is not None else 0.0
                if wait <= 0:
                    ok, result = self._attempt(fn)
                    if ok:
                        return result
                    if self.expired:
                        raise StorageUnavailable(self.exit_message())
                    continue
            self.sleep(min(wait, MAX_RETRY_S))

    # ------------------------------------------------------------------ spool
    def spool(self, path: Path, study_name: str) -> Path | None:
        """Save the held writes to `path` (JSON lines) for the next run; None when nothing is held."""
        from sweep.atomic import write_text_atomic

        with self.lock:
            if not self.pending:
                return None
            old = read_spool(path, study_name) if path.is_file() else []
            lines = [json.dumps({"study": study_name})] + [w.to_json() for w in [*old, *self.pending]]
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, "\n".join(lines) + "\n")
            self.pending.clear()  # they live in the file now: never spooled twice
        return path


def read_spool(path: Path, study_name: str) -> list[HeldWrite]:
    """The held writes a previous run of `study_name` saved (empty for another study's file)."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return []
    if not lines:
        return []
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError:
        return []
    if not isinstance(head, dict) or head.get("study") != study_name:
        return []
    out = []
    for line in lines[1:]:
        try:
            out.append(HeldWrite.from_json(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return out
