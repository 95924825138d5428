"""The client of the Drover agent's local intake.

A :class:`Client` speaks newline-delimited JSON to ``STATE_DIR/intake.sock``
(CONTRACT.md, "Local intake for device programs"). Readings the agent has
acknowledged are on its disk; readings it could not take (the agent is
stopped, restarting, or slow) wait in a bounded in-memory buffer and are sent,
in order, once it answers again. Nothing here raises because the agent is
away: the caller's loop keeps its pace.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import numbers
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Deque, Dict, Iterator, List, Mapping, Optional, Union

__all__ = [
    "DEFAULT_STATE_DIR",
    "Client",
    "Hold",
    "Stats",
]

log = logging.getLogger("drover_device")

#: Where ``drover-agent`` keeps its state unless told otherwise.
DEFAULT_STATE_DIR = "/var/lib/drover-agent"
#: The socket's name in the state directory.
SOCKET_FILE = "intake.sock"
#: Limits the agent enforces (agent/src/report/intake.rs); checked here first so a
#: programming error shows where it was made rather than as a refused line later.
MAX_METRICS = 64
MAX_NAME = 64
MAX_VERSIONS = 16
MAX_LINE = 64 * 1024
#: Lines sent in one write while flushing the buffer.
FLUSH_BATCH = 100

_METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Semantic version 2.0.0 (the agent checks it again, exactly).
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)

Number = Union[int, float]


def now_ms() -> int:
    """Milliseconds since the Unix epoch, as the intake expects."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Stats:
    """What a client has done so far (see :attr:`Client.stats`)."""

    #: Readings the agent acknowledged (durable in its spool).
    sent: int
    #: Readings waiting in memory for the agent.
    buffered: int
    #: Readings dropped because the buffer was full (oldest first).
    dropped: int
    #: Readings the agent answered with an error (logged, not retried).
    rejected: int
    #: Whether the last exchange with the agent succeeded.
    connected: bool


@dataclass
class Hold:
    """An update hold as the agent granted it (see :meth:`Client.hold_updates`)."""

    #: When the hold ends (ms since the epoch), after the agent's ``max_defer_s`` cap;
    #: ``None`` when the agent could not be asked or refused.
    until: Optional[int]
    #: The agent's reason when it refused or could not be reached.
    error: Optional[str] = None

    @property
    def granted(self) -> bool:
        """True when the agent holds installs and reboots until :attr:`until`."""
        return self.until is not None


class _Unavailable(Exception):
    """The agent did not answer (not running, socket missing, timed out)."""


class Client:
    """Sends readings, events and update holds to the local Drover agent.

    ``state_dir`` is the agent's state directory (default: ``$DROVER_AGENT_STATE_DIR``,
    else ``/var/lib/drover-agent``); ``socket_path`` names the socket directly instead.
    ``timeout`` bounds every connect, write and answer in seconds, so a call never
    waits longer than about that (the agent answers a reading once it is fsync'd).
    ``buffer_size`` readings wait in memory while the agent is away; beyond it the
    oldest are dropped and counted. With ``background=True`` (the default) a daemon
    thread retries every ``retry_interval`` seconds while anything is buffered;
    otherwise the buffer is flushed by the next :meth:`send` or :meth:`flush`.

    The client is thread-safe. Use it as a context manager, or call :meth:`close`,
    to stop the thread and try a last flush.
    """

    def __init__(
        self,
        state_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        *,
        socket_path: Optional[Union[str, "os.PathLike[str]"]] = None,
        timeout: float = 2.0,
        buffer_size: int = 10_000,
        background: bool = True,
        retry_interval: float = 2.0,
    ) -> None:
        if socket_path is None:
            if state_dir is None:
                state_dir = os.environ.get("DROVER_AGENT_STATE_DIR") or DEFAULT_STATE_DIR
            socket_path = os.path.join(os.fspath(state_dir), SOCKET_FILE)
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if timeout <= 0 or retry_interval <= 0:
            raise ValueError("timeout and retry_interval must be positive")
        self.socket_path: str = os.fspath(socket_path)
        self.timeout = float(timeout)
        self.retry_interval = float(retry_interval)
        self._background = background
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._sock: Optional[socket.socket] = None
        self._pending = bytearray()
        self._buffer: Deque[bytes] = collections.deque(maxlen=buffer_size)
        self._models: Dict[str, str] = {}
        self._sent = 0
        self._dropped = 0
        self._rejected = 0
        self._connected = False
        self._warned_down = False
        self._warned_full = False
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    # -- readings -------------------------------------------------------------

    def send(self, _metrics: Optional[Mapping[str, Number]] = None, *, ts: Optional[int] = None,
             **metrics: Number) -> Optional[int]:
        """Hands one reading to the agent: ``client.send(temp_c=48.2, inference_ms=12.5)``.

        Metric names are 1 to 64 ASCII letters, digits, ``_``, ``.`` or ``-`` (pass a
        mapping for names that are not Python identifiers); values are finite numbers.
        The reading is stamped now unless ``ts`` (ms since the epoch) is given, and
        carries the versions of the models reported with :meth:`loaded_model`.

        Answers the agent's sequence number once the reading is durable on the
        device, or ``None`` when it was buffered (agent away) or refused (logged).
        Raises ``ValueError`` only for a malformed reading, never for the agent.
        """
        merged: Dict[str, Number] = dict(_metrics or {})
        merged.update(metrics)
        line = self._reading_line(merged, ts)
        return self._submit(line)

    def event(self, name: str, value: Number = 1, *, ts: Optional[int] = None,
              **metrics: Number) -> Optional[int]:
        """Records that something happened, as the reading ``event.NAME = value``.

        Drover has no separate event channel from device programs: an event is a
        reading whose metric is named ``event.<name>`` (value 1 unless given), so it
        is stored, charted and compared like any reading, and an alert rule on
        ``event.<name>`` fires on it. Extra ``metrics`` travel in the same reading.
        """
        merged: Dict[str, Number] = {"event." + name: value}
        merged.update(metrics)
        return self.send(merged, ts=ts)

    def loaded_model(self, name: str, version: str) -> None:
        """Reports that the program now runs version ``version`` of bundle ``name``.

        From now on every reading this client sends names that version, and the
        agent stamps it on the reading in place of the installed version of
        ``name``: the server's per-version comparisons
        (``/api/v1/fleet/metrics?group_by=version:NAME``) then count each reading
        under the model that really produced it, also while a newly installed
        release waits for the program to reload it.
        """
        if not isinstance(name, str) or not 0 < len(name.encode()) <= 128 or "/" in name \
                or "\\" in name or ".." in name or name == "." \
                or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ValueError(f"bundle name {name!r} is not valid: 1 to 128 bytes, no '/', '\\' or '..'")
        if not isinstance(version, str) or not _SEMVER.fullmatch(version):
            raise ValueError(f"version {version!r} of {name!r} is not a semantic version such as '1.2.0'")
        with self._lock:
            if name not in self._models and len(self._models) >= MAX_VERSIONS:
                raise ValueError(f"at most {MAX_VERSIONS} loaded models can be reported")
            self._models[name] = version

    def unloaded_model(self, name: str) -> None:
        """Stops naming a model in readings (the installed version counts again)."""
        with self._lock:
            self._models.pop(name, None)

    @property
    def models(self) -> Dict[str, str]:
        """The models reported with :meth:`loaded_model`, name to version."""
        with self._lock:
            return dict(self._models)

    # -- update holds ---------------------------------------------------------

    def defer_updates(self, until: int) -> Hold:
        """Asks the agent to hold installs and reboots until ``until`` (ms since the epoch).

        The agent caps the hold at its ``max_defer_s`` (agent.toml) and answers the
        end it granted. An ``until`` in the past ends a hold at once. A hold is never
        buffered: when the agent cannot be reached the answer says so
        (``granted`` is False) and the caller decides whether to go on.
        """
        line = _encode({"control": "defer_updates", "until": int(until)})
        with self._lock:
            try:
                answer = self._exchange([line])[0]
            except _Unavailable as e:
                self._went_down(str(e))
                return Hold(until=None, error=f"the agent is not answering: {e}")
        if answer.get("ok") is True and isinstance(answer.get("until"), int):
            granted: int = answer["until"]  # type: ignore[assignment]
            # An end already past (a release) holds nothing.
            return Hold(until=granted if granted > now_ms() else None)
        return Hold(until=None, error=str(answer.get("error", "no reason given")))

    def release_updates(self) -> Hold:
        """Ends this device's update hold now (a deferred install then proceeds)."""
        return self.defer_updates(now_ms())

    @contextlib.contextmanager
    def hold_updates(self, seconds: float) -> Iterator[Hold]:
        """Holds installs and reboots for at most ``seconds`` while the block runs.

        ::

            with client.hold_updates(seconds=600) as hold:
                run_critical_job()      # hold.granted tells whether the agent agreed

        On leaving the block the hold is released at once, so a deferred update
        proceeds. The hold belongs to the device, not to this client: another
        program's hold is replaced by the newest request, and a program that dies
        inside the block leaves its hold to run out by itself (at most ``seconds``).
        """
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        hold = self.defer_updates(now_ms() + int(seconds * 1000))
        if not hold.granted:
            log.warning("updates are not held: %s", hold.error)
        try:
            yield hold
        finally:
            if hold.granted:
                released = self.release_updates()
                if released.error is not None:
                    log.warning("could not release the update hold (it ends by itself at %d): %s",
                                hold.until, released.error)

    # -- buffer ---------------------------------------------------------------

    def flush(self) -> int:
        """Sends buffered readings now; answers how many are still buffered."""
        with self._lock:
            self._drain()
            return len(self._buffer)

    @property
    def stats(self) -> Stats:
        """Counters: sent, buffered, dropped, rejected, and whether the agent answered last."""
        with self._lock:
            return Stats(sent=self._sent, buffered=len(self._buffer), dropped=self._dropped,
                         rejected=self._rejected, connected=self._connected)

    def close(self, flush_timeout: Optional[float] = None) -> None:
        """Stops the retry thread and tries one last flush (buffered readings that
        still cannot be sent are lost, and counted in :attr:`stats` ``buffered``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(flush_timeout if flush_timeout is not None else self.timeout * 2)
        with self._lock:
            if self._buffer:
                self._drain()
            if self._buffer:
                log.warning("closing with %d readings the agent never took", len(self._buffer))
            self._disconnect()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------

    def _reading_line(self, metrics: Mapping[str, Number], ts: Optional[int]) -> bytes:
        if not metrics:
            raise ValueError("a reading needs at least one metric, e.g. send(temp_c=48.2)")
        if len(metrics) > MAX_METRICS:
            raise ValueError(f"a reading has at most {MAX_METRICS} metrics, not {len(metrics)}")
        clean: Dict[str, float] = {}
        for name, value in metrics.items():
            if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
                raise ValueError(
                    f"metric name {name!r} is not valid: use 1 to {MAX_NAME} ASCII letters, "
                    "digits, '_', '.' or '-'")
            # numbers.Real takes numpy's scalars too; bool is a number only to Python.
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not math.isfinite(value):
                raise ValueError(f"metric {name!r} must be a finite number, not {value!r}")
            clean[name] = value if isinstance(value, int) else float(value)
        reading: Dict[str, object] = {"metrics": clean, "ts": int(ts) if ts is not None else now_ms()}
        with self._lock:
            if self._models:
                reading["versions"] = dict(self._models)
        line = _encode(reading)
        if len(line) > MAX_LINE:
            raise ValueError(f"the reading is longer than {MAX_LINE} bytes")
        return line

    def _submit(self, line: bytes) -> Optional[int]:
        with self._lock:
            if self._buffer:
                self._drain()
            if self._buffer:
                self._enqueue(line)
                return None
            try:
                answer = self._exchange([line])[0]
            except _Unavailable as e:
                self._went_down(str(e))
                self._enqueue(line)
                return None
            return self._count(answer)

    def _count(self, answer: Mapping[str, object]) -> Optional[int]:
        if answer.get("ok") is True and isinstance(answer.get("seq"), int):
            self._sent += 1
            return answer["seq"]  # type: ignore[return-value]
        self._rejected += 1
        log.warning("the agent refused a reading: %s", answer.get("error", "no reason given"))
        return None

    def _enqueue(self, line: bytes) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            self._dropped += 1
            if not self._warned_full:
                self._warned_full = True
                log.warning("the reading buffer is full (%d); dropping the oldest readings until "
                            "the agent answers again", self._buffer.maxlen)
        self._buffer.append(line)
        if self._background and not self._closed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._retry_loop,
                                                name="drover-device-flush", daemon=True)
                self._thread.start()
            self._wake.notify_all()

    def _drain(self) -> None:
        """Sends buffered readings in order, in batches, until the buffer is empty or
        the agent stops answering. Called with the lock held."""
        while self._buffer:
            batch = [self._buffer[i] for i in range(min(FLUSH_BATCH, len(self._buffer)))]
            try:
                answers = self._exchange(batch)
            except _Unavailable as e:
                self._went_down(str(e))
                return
            for _ in batch:
                self._buffer.popleft()
            for answer in answers:
                self._count(answer)

    def _retry_loop(self) -> None:
        with self._lock:
            while not self._closed:
                if self._buffer:
                    self._drain()
                self._wake.wait(self.retry_interval if self._buffer else None)

    def _went_down(self, why: str) -> None:
        self._disconnect()
        if self._connected or not self._warned_down:
            log.warning(
                "the Drover agent is not answering at %s (%s); readings wait in memory "
                "(up to %d, then the oldest are dropped) and are sent when it is back",
                self.socket_path, why, self._buffer.maxlen)
            self._warned_down = True
        self._connected = False

    def _exchange(self, lines: List[bytes]) -> List[Dict[str, object]]:
        """Writes ``lines`` and reads one answer for each, reconnecting once if a kept
        connection turned out to be closed. Called with the lock held."""
        for attempt in (0, 1):
            fresh = self._sock is None
            try:
                sock = self._connect()
                sock.sendall(b"".join(lines))
                answers = [self._read_answer(sock) for _ in lines]
            except (OSError, _Unavailable) as e:
                self._disconnect()
                if fresh or attempt == 1:
                    raise _Unavailable(_describe(e)) from None
                continue
            if not self._connected:
                if self._warned_down:
                    log.warning("the Drover agent answers again at %s", self.socket_path)
                self._warned_down = False
                self._warned_full = False
            self._connected = True
            return answers
        raise _Unavailable("unreachable")  # pragma: no cover (the loop returns or raises)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except OSError:
                sock.close()
                raise
            self._sock = sock
            self._pending = bytearray()
        return self._sock

    def _read_answer(self, sock: socket.socket) -> Dict[str, object]:
        while b"\n" not in self._pending:
            chunk = sock.recv(65536)
            if not chunk:
                raise _Unavailable("the agent closed the connection")
            self._pending += chunk
        end = self._pending.index(b"\n")
        raw = bytes(self._pending[:end])
        del self._pending[: end + 1]
        try:
            answer = json.loads(raw)
        except ValueError:
            raise _Unavailable(f"the agent's answer is not JSON: {raw[:80]!r}") from None
        if not isinstance(answer, dict):
            raise _Unavailable(f"the agent's answer is not an object: {raw[:80]!r}")
        return answer

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        self._pending = bytearray()


def _encode(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _describe(error: BaseException) -> str:
    if isinstance(error, socket.timeout):
        return "no answer in time"
    if isinstance(error, FileNotFoundError):
        return "no socket: the agent is not running"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: the agent is not running"
    return str(error) or type(error).__name__
