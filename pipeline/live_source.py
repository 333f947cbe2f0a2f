"""One live stream: an FFmpeg child kept alive by a supervisor thread.

State machine (``state``), visible over the API::

    connecting -> live -> (stalled | source error) -> reconnecting -> connecting -> ...
    file sources that end without ``loop``: live -> stopped;  unrecoverable input: failed
    stop(): any -> stopped

Reconnection waits :class:`pipeline.batcher.Backoff` delays (exponential, jittered) and resets
after the first good frame. A watchdog (``check_stall``, called by the pipeline every few hundred
milliseconds) kills an FFmpeg child that delivered no frame for ``stall_timeout_s``, which turns
into a reconnect. Frames pass the stream's :class:`RateGate` into its :class:`LatestSlot`; a
dead or corrupt stream only ever affects its own slot.
"""

from __future__ import annotations

import enum
import threading
import time

from pipeline.batcher import Backoff, LatestSlot, RateGate
from pipeline.config import StreamConfig
from pipeline.decode import DecodePlan
from pipeline.sources import FFmpegSource, redact
from pipeline.types import VigilError


class StreamState(enum.StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"
    FAILED = "failed"


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
        self.last_error = ""
        self.reconnects = 0
        self.frames_decoded = 0
        self.frames_inferred = 0
        self.width = 0
        self.height = 0
        self.started = time.monotonic()
        self._stall_timeout = stall_timeout_s
        self._timeout = timeout_s
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._allow_http = allow_http
        self._stop = threading.Event()
        self._source: FFmpegSource | None = None
        self._source_lock = threading.Lock()
        self._last_progress = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"vigil-src-{spec.id}", daemon=True)

    @property
    def stream_id(self) -> str:
        return self.spec.id

    @property
    def url_redacted(self) -> str:
        return redact(self.spec.url)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._kill_source()
        self._thread.join(timeout)
        if self.state is not StreamState.FAILED:
            self.state = StreamState.STOPPED

    def check_stall(self, now: float) -> bool:
        """Kill the FFmpeg child if it gave no frame for the stall timeout; True if it did."""
        if self.state not in (StreamState.LIVE, StreamState.CONNECTING):
            return False
        # Connecting includes the probe and FFmpeg's own open, each bounded by the I/O timeout.
        grace = self._stall_timeout + (self._timeout if self.state is StreamState.CONNECTING else 0)
        if now - self._last_progress <= grace:
            return False
        self.state = StreamState.STALLED
        self.last_error = f"no frame for {self._stall_timeout:g} s"
        self._kill_source()
        return True

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

    def _run(self) -> None:
        while not self._stop.is_set():
            self._last_progress = time.monotonic()
            error = ""
            try:
                src = self._open()
                with self._source_lock:
                    self._source = src
                if self._stop.is_set():
                    break
                self.width, self.height = src.info.width, src.info.height
                for frame in src.frames():
                    self._last_progress = time.monotonic()
                    if self.state is not StreamState.LIVE:
                        self.state = StreamState.LIVE
                        self._backoff.reset()
                    self.frames_decoded += 1
                    if self.gate.admit(frame.arrival):
                        self.slot.put(frame)
                    if self._stop.is_set():
                        break
                error = src.last_error or "the source ended"
                ended = not self.is_network and not self.spec.loop
                if ended and not self._stop.is_set() and self.state is StreamState.LIVE:
                    self.state = StreamState.STOPPED  # a file played once has finished
                    return
            except VigilError as e:
                error = str(e)
                if not self.is_network and "not found" in error:
                    self.state, self.last_error = StreamState.FAILED, error
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
            self._stop.wait(self._backoff.next_delay())
            if not self._stop.is_set():
                self.state = StreamState.CONNECTING
        self.state = StreamState.STOPPED
