"""RTSP for real: Debian's GStreamer RTSP server on loopback, killed and restarted."""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.serving import free_port, serve
from tests.factories import SAMPLE_CLIP, wait_until

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "rtsp_server.py"


def _gst_available() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"]
    return subprocess.run(probe, capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(
    not _gst_available(),
    reason="needs Debian's GStreamer RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0): "
    "`make install` installs it",
)


class RtspServer:
    def __init__(self, port: int, clip: Path) -> None:
        self.port, self.clip = port, clip
        self.rtp_base = random.randrange(20000, 40000, 2)
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SCRIPT), "--port", str(self.port),
             "--rtp-base", str(self.rtp_base), f"cam={self.clip}"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        url = self.proc.stdout.readline().strip()
        assert url.startswith("rtsp://"), url
        return url

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def rtsp(tmp_path: Path) -> Iterator[RtspServer]:
    clip = tmp_path / "people.mp4"
    shutil.copy(SAMPLE_CLIP, clip)
    server = RtspServer(free_port(), clip)
    yield server
    server.kill()


def test_rtsp_server_killed_and_restarted(rtsp: RtspServer, tmp_path: Path) -> None:
    rtsp.start()
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(SAMPLE_CLIP, media / "local.mp4")
    cfg = {
        "server": {"media_root": str(media), "drain_timeout_s": 3.0},
        "live": {"stall_timeout_s": 2.0, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "source": {"timeout_s": 3.0},
        "tracker": {"embedder": "histogram"},
        "streams": [
            {"id": "cam", "url": f"rtsp://viewer:hunter2@127.0.0.1:{rtsp.port}/cam", "fps": 10},
            {"id": "local", "url": "local.mp4", "fps": 10},
        ],
    }
    with serve(cfg, tmp_path) as srv:
        cam = srv.wait_state("cam", "live", timeout=40)
        assert cam["width"] == 768 and "hunter2" not in str(cam)
        srv.wait_state("local", "live")
        rtsp.kill()

        # The camera notices it is down; meanwhile the other stream keeps going.
        down = wait_until(
            lambda: srv.stream("cam")["state"] in {"stalled", "reconnecting", "connecting"},
            30,
            "the camera is seen as down",
        )
        assert down
        start = srv.stream("local")["frames_inferred"]
        wait_until(
            lambda: srv.stream("local")["frames_inferred"] >= start + 30,
            30,
            "the local stream advances 30 frames while the camera is down",
        )
        cam = srv.stream("cam")
        assert cam["state"] != "live" and "hunter2" not in str(cam)

        rtsp.start()
        back = srv.wait_state("cam", "live", timeout=60)
        assert back["reconnects"] >= 1
        before = back["frames_inferred"]
        wait_until(
            lambda: srv.stream("cam")["frames_inferred"] > before, 30, "the camera delivers again"
        )
        metrics = srv.request("GET", "/metrics")[1]
        assert "hunter2" not in metrics and 'vigil_stream_reconnects_total{stream="cam"}' in metrics
