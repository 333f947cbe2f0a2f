"""One live stream: an FFmpeg child kept alive by a supervisor thread.

State machine (``state``), visible over the API::

    connecting -> live -> (stalled | source error) -> reconnecting -> connecting -> ...
    file sources that end without ``loop``: live -> stopped
    unrecoverable input: failed (a local file that is missing, not a video, decodes no frame,
    or that FFmpeg reports cut short: it will not heal by retrying)
    stop(): any -> stopped

Reconnection waits :class:`pipeline.batcher.Backoff` delays (exponential, jittered), reset by the
first good frame. While it waits for a network source whose server did not even accept a TCP
connection, the supervisor knocks on that port once a second (a TCP connect, nothing more) and
retries as soon as it opens: a camera that comes back is live again within about a second of its
server answering, instead of after the rest of a backoff delay, and a dead one costs one SYN a
second. A watchdog (``check_stall``, called by the pipeline every few hundred milliseconds) kills
an FFmpeg child that delivered no frame for ``stall_timeout_s``, which turns into a reconnect.

``last_error`` is the cause of the current trouble and is cleared when the stream is live again
(a stale cause would blame a healthy camera); decode errors while live (corrupt packets decoded
past) are counted in ``decode_errors`` and shown as ``last_error`` with ``last_error_at``.

Frames pass the stream's :class:`RateGate` into its :class:`LatestSlot`. A local file that is
not paced (``realtime: false``) waits for its slot to be taken instead of replacing the frame in
it: it is decoded as fast as it is inferred, never faster, so it cannot burn the CPU that
inference and the other streams need. A dead or corrupt stream only ever affects its own slot.
"""

from __future__ import annotations

import enum
import socket
import threading
import time
from urllib.parse import urlsplit

from pipeline.batcher import Backoff, LatestSlot, RateGate
from pipeline.config import StreamConfig
from pipeline.credentials import public_url, redact
from pipeline.decode import DecodePlan
from pipeline.sources import FFmpegSource
from pipeline.types import Frame, VigilError

DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
KNOCK_INTERVAL_S = 1.0


class StreamState(enum.StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"
    FAILED = "failed"


def _endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) of a network URL's server, or None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname and port else None


def port_open(endpoint: tuple[str, int], timeout: float = 1.0) -> bool:
    """True if a TCP connection to ``endpoint`` succeeds within ``timeout`` (then closed)."""
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            return True
    except OSError:
        return False


class LiveStream:
    """Supervises one source; thread-safe reads of its counters for the API and metrics."""

    def __init__(
        self,
        spec: StreamConfig,
        url: str | None = None,
        wakeup: threading.Condition | None = None,
        stall_timeout_s: float = 10.0,
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        allow_http: bool = False,
        decode: DecodePlan | None = None,
        mask_query: bool = True,
    ) -> None:
        self.spec = spec
        self.decode = decode
        self.url = url or spec.url  # what FFmpeg opens (a path made absolute by the URL policy)
        self.is_network = self.url.lower().startswith(
            ("rtsp://", "rtsps://", "http://", "https://")
        )
        self.slot = LatestSlot(wakeup)
        self.gate = RateGate(spec.fps)
        self.state = StreamState.CONNECTING
        self._last_error = ""
        self.last_error_at = 0.0  # unix time of last_error (0: none)
        self.reconnects = 0
        self.frames_decoded = 0
        self.frames_inferred = 0
        self.decode_errors = 0  # decode errors FFmpeg reported, over every connection
        self.width = 0
        self.height = 0
        self.codec = ""
        self.started = time.monotonic()
        self.url_public = public_url(spec.url, mask_query)
        self._stall_timeout = stall_timeout_s
        self._timeout = timeout_s
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._allow_http = allow_http
        self._paced_by_consumer = not self.is_network and not spec.realtime
        self._stop = threading.Event()
        self._source: FFmpegSource | None = None
        self._source_lock = threading.Lock()
        self._last_progress = time.monotonic()
        self._probing = False  # the probe runs: bounded by its own timeout, not the watchdog's
        self._thread = threading.Thread(target=self._run, name=f"vigil-src-{spec.id}", daemon=True)

    @property
    def stream_id(self) -> str:
        return self.spec.id

    @property
    def url_redacted(self) -> str:
        return redact(self.spec.url)

    @property
    def last_error(self) -> str:
        return self._last_error

    @last_error.setter
    def last_error(self, message: str) -> None:
        self._last_error = message
        self.last_error_at = time.time() if message else 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._kill_source()
        self._thread.join(timeout)
        if self.state is not StreamState.FAILED:
            self.state = StreamState.STOPPED

    @property
    def alive(self) -> bool:
        """True while the supervisor thread runs."""
        return self._thread.is_alive()

    def check_stall(self, now: float) -> bool:
        """Kill the FFmpeg child if it gave no frame for the stall timeout; True if it did."""
        if self._probing or self.state not in (StreamState.LIVE, StreamState.CONNECTING):
            return False
        # Connecting is FFmpeg's own open, bounded by the I/O timeout; the probe before it has
        # its own timeout (a stall reported then would hide the probe's real error).
        grace = self._stall_timeout + (self._timeout if self.state is StreamState.CONNECTING else 0)
        if now - self._last_progress <= grace:
            return False
        self.state = StreamState.STALLED
        self.last_error = f"no frame for {self._stall_timeout:g} s"
        self._kill_source()
        return True

    def decode_cpu(self) -> tuple[int, float]:
        """(pid, CPU seconds) of the FFmpeg child decoding now; (0, 0.0) when none runs."""
        with self._source_lock:
            src = self._source
        return (0, 0.0) if src is None else src.cpu_seconds()

    def _kill_source(self) -> None:
        with self._source_lock:
            src = self._source
        if src is not None:
            src.close()

    def _open(self) -> FFmpegSource:
        return FFmpegSource(
            self.url,
            stream_id=self.spec.id,
            rtsp_transport=self.spec.rtsp_transport,
            timeout_s=self._timeout,
            realtime=self.spec.realtime and not self.is_network,
            loop=self.spec.loop and not self.is_network,
            allow_http=self._allow_http,
            decode=self.decode,
        )

    def _fail(self, message: str) -> None:
        self.state, self.last_error = StreamState.FAILED, message

    def _offer(self, frame: Frame) -> None:
        """Hand an admitted frame to the slot: replace (live) or wait for room (unpaced file)."""
        if not self._paced_by_consumer:
            self.slot.put(frame)
            return
        while not self._stop.is_set():
            self._last_progress = time.monotonic()  # waiting on inference is not a stall
            if self.slot.put_when_free(frame, timeout=0.5):
                return

    def _decode(self, src: FFmpegSource) -> str:
        """Run one FFmpeg child to its end; returns why it ended ("" if stopped or failed)."""
        self.width, self.height = src.info.width, src.info.height
        self.codec = src.info.codec
        seen_errors = 0
        for frame in src.frames():
            self._last_progress = time.monotonic()
            if self.state is not StreamState.LIVE:
                self.state = StreamState.LIVE
                self._backoff.reset()
                self.last_error = ""  # the trouble is over
            if src.decode_errors != seen_errors:
                # the cause before the count: a status read in between never shows errors
                # counted with no cause (stream_status reads last_error first)
                self.last_error = f"decode error: {src.last_error}"
                self.decode_errors += src.decode_errors - seen_errors
                seen_errors = src.decode_errors
            if src.truncated and not self.is_network:
                self._fail(f"the file is truncated ({src.truncated})")
                return ""
            self.frames_decoded += 1
            if self.gate.admit(frame.arrival):
                self._offer(frame)
            if self._stop.is_set():
                return ""
        self.decode_errors += src.decode_errors - seen_errors
        if src.truncated and not self.is_network:
            self._fail(f"the file is truncated ({src.truncated})")
            return ""
        if not self.is_network and not self.spec.loop and not src.exit_reason:
            self.state = StreamState.STOPPED  # a file played once has finished
            return ""
        return src.exit_reason or "the source ended"

    def _run(self) -> None:
        while not self._stop.is_set():
            self._last_progress = time.monotonic()
            error = ""
            try:
                self._probing = True
                try:
                    src = self._open()  # the probe: bounded by its own timeout
                finally:
                    self._probing = False
                # The watchdog's clock starts when FFmpeg starts, not before the probe: on a
                # busy machine probe + open could otherwise outlast the grace every time.
                self._last_progress = time.monotonic()
                with self._source_lock:
                    self._source = src
                if self._stop.is_set():
                    break
                error = self._decode(src)
                if not error:
                    return
            except VigilError as e:
                error = str(e)
                if not self.is_network:  # a local file does not heal by retrying
                    self._fail(error)
                    return
            except Exception as e:  # never let one stream's thread die silently
                error = f"{type(e).__name__}: {e}"
            finally:
                with self._source_lock:
                    src_done, self._source = self._source, None
                if src_done is not None:
                    src_done.close()
            if self._stop.is_set():
                break
            if self.state is not StreamState.STALLED:
                self.last_error = redact(error)
            self.reconnects += 1
            self.state = StreamState.RECONNECTING
            self._wait_before_retry(self._backoff.next_delay())
            if not self._stop.is_set():
                self.state = StreamState.CONNECTING
        if self.state is not StreamState.FAILED:
            self.state = StreamState.STOPPED

    def _wait_before_retry(self, delay: float) -> None:
        """Sleep ``delay`` (or until stopped). For a network source whose server refused the
        TCP connection when the wait began, knock once a second and cut the wait short as soon
        as the port opens; a server that accepts connections but fails the stream gets the full
        backoff, so a broken camera is never hammered."""
        endpoint = _endpoint(self.url) if self.is_network else None
        if endpoint is None or port_open(endpoint, min(1.0, self._timeout)):
            self._stop.wait(delay)
            return
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(KNOCK_INTERVAL_S, left))
            if not self._stop.is_set() and port_open(endpoint, min(1.0, self._timeout)):
                return
