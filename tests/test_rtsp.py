"""RTSP for real: Debian's GStreamer RTSP server on loopback, killed and restarted."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.faults import RtspServer, TcpRelay, gst_available, resolution_changing_clip
from benchmarks.serving import free_port, serve
from tests.factories import SAMPLE_CLIP, wait_until

pytestmark = pytest.mark.skipif(
    not gst_available(),
    reason="needs Debian's GStreamer RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0): "
    "`make install` installs it",
)


@pytest.fixture
def rtsp(tmp_path: Path) -> Iterator[RtspServer]:
    clip = tmp_path / "people.mp4"
    shutil.copy(SAMPLE_CLIP, clip)
    server = RtspServer(free_port(), clip, auth="viewer:hunter2")
    yield server
    server.kill()


def _cmdlines_of_tree(pid: int) -> list[str]:
    """The command line of ``pid`` and of every process below it, as ``ps`` shows them."""
    out = subprocess.run(
        ["ps", "-ww", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True
    )
    rows = [line.split(None, 2) for line in out.stdout.splitlines() if line.strip()]
    tree, found = {pid}, True
    while found:
        found = False
        for row in rows:
            if len(row) == 3 and int(row[1]) in tree and int(row[0]) not in tree:
                tree.add(int(row[0]))
                found = True
    return [row[2] for row in rows if len(row) == 3 and int(row[0]) in tree]


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
            {"id": "cam", "url": f"rtsp://viewer:hunter2@127.0.0.1:{rtsp.port}/cam?token=s3kr1t&ch=1",
             "fps": 10},
            {"id": "local", "url": "local.mp4", "fps": 10},
        ],
    }  # fmt: skip
    with serve(cfg, tmp_path) as srv:
        # The camera wants its password (RTSP basic auth): FFmpeg got it, yet no command line
        # on the machine shows it, and neither does the API.
        cam = srv.wait_state("cam", "live", timeout=40)
        assert cam["width"] == 768 and "hunter2" not in str(cam) and "s3kr1t" not in str(cam)
        assert cam["url"] == f"rtsp://***@127.0.0.1:{rtsp.port}/cam?token=***&ch=***"
        lines = _cmdlines_of_tree(srv.proc.pid)
        assert any("ffmpeg" in line and "pipe:0" in line for line in lines), lines
        assert not [line for line in lines if "hunter2" in line or "s3kr1t" in line]
        srv.wait_state("local", "live")
        wrong = {"id": "wrong", "url": f"rtsp://viewer:letmein@127.0.0.1:{rtsp.port}/cam"}
        assert srv.request("POST", "/api/streams", wrong)[0] == 201
        refused = wait_until(
            lambda: "401" in ((w := srv.stream("wrong"))["last_error"] or "") and w,
            40,
            "wrong password refused",
        )
        assert "401 Unauthorized" in refused["last_error"] and "letmein" not in str(refused)
        assert srv.request("DELETE", "/api/streams/wrong")[0] == 204
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
        cam = wait_until(
            lambda: (c := srv.stream("cam"))["last_error"] and "refused" in c["last_error"] and c,
            30,
            "the refused connection is the reported cause",
        )
        assert cam["state"] != "live" and "hunter2" not in str(cam)

        rtsp.start()
        back = srv.wait_state("cam", "live", timeout=60)
        assert back["reconnects"] >= 1
        assert back["last_error"] is None  # the trouble is over: no stale cause
        before = back["frames_inferred"]
        wait_until(
            lambda: srv.stream("cam")["frames_inferred"] > before, 30, "the camera delivers again"
        )
        metrics = srv.request("GET", "/metrics")[1]
        assert "hunter2" not in metrics and 'vigil_stream_reconnects_total{stream="cam"}' in metrics


def test_a_flaky_network_and_a_camera_that_changes_resolution(tmp_path: Path) -> None:
    """The camera's RTSP connection runs through a relay that delays, freezes and resets it;
    a second camera changes its picture size every 2 s; a local file runs beside them."""
    clip = tmp_path / "people.mp4"
    shutil.copy(SAMPLE_CLIP, clip)
    changing = resolution_changing_clip(tmp_path)
    rtsp = RtspServer(free_port(), clip, res=changing)
    rtsp.start()
    relay = TcpRelay(rtsp.port).start()
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(SAMPLE_CLIP, media / "local.mp4")
    cfg = {
        "server": {"media_root": str(media), "drain_timeout_s": 3.0},
        "live": {"stall_timeout_s": 2.0, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "source": {"timeout_s": 3.0},
        "tracker": {"embedder": "histogram"},
        "streams": [
            {"id": "cam", "url": f"rtsp://127.0.0.1:{relay.port}/cam", "fps": 10},
            {"id": "res", "url": f"rtsp://127.0.0.1:{rtsp.port}/res", "fps": 10},
            {"id": "local", "url": "local.mp4", "fps": 10},
        ],
    }
    try:
        with serve(cfg, tmp_path) as srv:
            for sid in ("cam", "res", "local"):
                srv.wait_state(sid, "live", timeout=60)

            def advances(sid: str, n: int, timeout: float = 30) -> None:
                start = srv.stream(sid)["frames_inferred"]
                wait_until(
                    lambda: srv.stream(sid)["frames_inferred"] >= start + n,
                    timeout,
                    f"{sid} advances {n} frames",
                )

            relay.delay_s = 0.2  # latency: still live, still delivering
            advances("cam", 20)
            assert srv.stream("cam")["state"] == "live"
            relay.delay_s = 0.0

            reconnects = srv.stream("cam")["reconnects"]
            relay.stall()  # the network freezes: the watchdog notices, the others go on
            wait_until(lambda: srv.stream("cam")["state"] != "live", 30, "cam seen as stalled")
            advances("local", 20)
            relay.resume()
            back = srv.wait_state("cam", "live", timeout=60)
            assert back["reconnects"] > reconnects and back["last_error"] is None

            relay.drop()  # connections reset: back by itself
            wait_until(
                lambda: srv.stream("cam")["reconnects"] > back["reconnects"], 30, "cam reconnects"
            )
            srv.wait_state("cam", "live", timeout=60)
            advances("cam", 10)

            # 10 fps, a new size every 2 s: many changes went by; frames still come whole
            advances("res", 60, timeout=60)
            res = srv.stream("res")
            assert res["state"] == "live" and (res["width"], res["height"]) in (
                (320, 240),
                (640, 360),
            )
            advances("local", 10)
            out = srv.request("GET", "/metrics")[1]
            assert 'vigil_stream_state{state="live",stream="local"} 1.0' in out
    finally:
        relay.stop()
        rtsp.kill()
