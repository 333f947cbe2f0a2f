"""The live stream's supervisor: what it tells about bad files, and how fast it comes back."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from benchmarks.serving import free_port
from pipeline.batcher import Backoff
from pipeline.config import StreamConfig
from pipeline.live_source import LiveStream, StreamState, port_open
from tests.factories import wait_until


def test_a_non_video_file_fails_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("not a video")
    stream = LiveStream(StreamConfig("n", str(tmp_path / "notes.mp4")))
    stream.start()
    wait_until(lambda: stream.state is StreamState.FAILED and stream.last_error, 20,
               "the stream failed with its reason")  # fmt: skip
    assert "not a readable video" in stream.last_error and stream.last_error_at > 0
    assert stream.reconnects == 0  # a file does not heal: no retries
    stream.stop()
    assert stream.state is StreamState.FAILED


def test_waiting_to_reconnect_ends_when_the_camera_port_opens() -> None:
    """A camera whose port refused connections is retried as soon as the port opens, not after
    the rest of a 30 s backoff; a port that never opens waits the full delay."""
    port = free_port()
    stream = LiveStream(
        StreamConfig("cam", f"rtsp://127.0.0.1:{port}/x"), backoff=Backoff(30.0, 30.0)
    )
    done = threading.Event()
    started = time.monotonic()
    waiter = threading.Thread(target=lambda: (stream._wait_before_retry(30.0), done.set()))
    waiter.start()
    time.sleep(1.5)
    assert not done.is_set()  # still waiting while the port is closed
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert port_open(("127.0.0.1", port))
        assert done.wait(10), "the wait did not end when the port opened"
    assert time.monotonic() - started < 15
    waiter.join()
