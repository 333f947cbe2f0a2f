"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a real
`vigil serve` on loopback playing the sample clip, with API keys on: sign-in, live previews with
the boxes of their own frame, drawing a counting line, adding a camera, a wrong key, and a server
restart the page rides out by itself. Plus the session token and preview message over plain
HTTP and WebSocket clients."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from benchmarks.serving import Server, serve
from server.preview import unpack
from tests.factories import SAMPLE_CLIP, wait_until

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")

KEY = "dashboard-test-key-0123456789"
PERSON_RED = (255, 59, 48)  # classColor(0) in server/static/js/draw.js


class Running:
    """The module's server, restartable on the same port (a browser must find it again)."""

    def __init__(self, cfg: dict[str, Any], tmp: Path) -> None:
        self.cfg, self.tmp = cfg, tmp
        self.logs: list[str] = []
        self._stack = contextlib.ExitStack()
        self.srv: Server = self._stack.enter_context(serve(cfg, tmp))

    def stop(self) -> None:
        """SIGTERM, keeping what the server printed."""
        self.srv.proc.terminate()
        self.logs.append(self.srv.proc.communicate(timeout=30)[0])
        self._stack.close()

    def start(self) -> None:
        self._stack = contextlib.ExitStack()
        self.srv = self._stack.enter_context(serve(self.cfg, self.tmp, port=self.srv.port))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("dashboard")
    media = tmp / "media"
    media.mkdir()
    shutil.copy(SAMPLE_CLIP, media / "people.mp4")
    secret = tmp / "token-secret"
    secret.write_text("a-token-secret-of-at-least-32-characters\n")
    cfg = {
        "server": {"media_root": str(media), "drain_timeout_s": 2.0},
        "auth": {"keys": [KEY], "mutations_per_minute": 1000},
        "tracker": {"embedder": "histogram"},
        "dashboard": {"token_secret_file": str(secret)},
        "streams": [{"id": "people", "url": "people.mp4", "fps": 10, "loop": True}],
    }
    r = Running(cfg, tmp)
    try:
        r.srv.wait_state("people", "live", 60)
        yield r
    finally:
        r.stop()
    log = "\n".join(r.logs)
    assert "Traceback" not in log and KEY not in log and "vigil.token" not in log, log[-3000:]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


def _signed_in(browser: Any, srv: Server, errors: list[str] | None = None) -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    if errors is not None:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(srv.base + "/")
    page.fill("#login-key", KEY)
    page.click("#login-submit")
    page.wait_for_selector("#login", state="hidden")
    return page


def _stats(page: Any, sid: str) -> dict[str, Any]:
    return dict(page.evaluate("window.vigil.stats()").get(sid) or {})


def _collect_tracks(srv: Server, into: dict[int, list[list[float]]], stop: threading.Event) -> None:
    """Our own WebSocket client: every track message of "people" by frame index."""
    with connect(srv.ws, additional_headers={"X-API-Key": KEY}) as ws:
        ws.send(json.dumps({"op": "subscribe", "streams": ["people"], "kinds": []}))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                msg = json.loads(ws.recv(timeout=0.5))
                if msg.get("v") == 1 and "tracks" in msg:
                    into[msg["frame"]] = msg["tracks"]
                    while len(into) > 2000:
                        into.pop(min(into))


# Reads, in one task (no redraw in between), what the grid tile drew last and the canvas pixels
# across the left edge of each box.
EDGES = """() => {
  const drawn = window.vigil.drawn().people;
  const canvas = document.querySelector('figure[data-stream="people"] canvas');
  const ctx = canvas.getContext('2d');
  const edges = drawn.boxes.map((b) => {
    const y = Math.round((b.box[1] + b.box[3]) / 2);
    return Array.from(ctx.getImageData(b.box[0] - 3, y, 7, 1).data);
  });
  return {frame: drawn.frame, boxes: drawn.boxes, edges};
}"""


def test_live_previews_show_the_boxes_of_their_own_frame(running: Running, browser: Any) -> None:
    srv = running.srv
    tracks: dict[int, list[list[float]]] = {}
    stop = threading.Event()
    collector = threading.Thread(target=_collect_tracks, args=(srv, tracks, stop), daemon=True)
    collector.start()
    errors: list[str] = []
    page = _signed_in(browser, srv, errors)
    try:
        tile = page.locator('figure[data-stream="people"] canvas')
        wait_until(lambda: _stats(page, "people").get("drawn", 0) >= 3, 60, "previews drawn")
        first = tile.screenshot()
        wait_until(lambda: tile.screenshot() != first, 30, "the preview changing")
        seen = wait_until(
            lambda: (e := page.evaluate(EDGES))["boxes"] and e["frame"] in tracks and e,
            90, "a drawn frame with boxes that our own client also received",
        )  # fmt: skip
        ws_boxes = [t[3:7] for t in tracks[seen["frame"]]]
        assert [b["src"] for b in seen["boxes"]] == ws_boxes  # the boxes of that very frame
        for b, edge in zip(seen["boxes"], seen["edges"], strict=True):
            pixels = np.array(edge, np.int32).reshape(-1, 4)[:, :3]
            assert b["cls"] != 0 or (np.abs(pixels - PERSON_RED).max(1) < 40).any(), pixels
        stored = page.evaluate("JSON.stringify(sessionStorage)")  # the token only, not the key
        assert KEY not in stored and '"token"' in stored.replace('\\"', '"')
        assert KEY not in page.url and "token" not in page.url
        stats = _stats(page, "people")
        assert 0 < stats["median"] < 10 and stats["p95"] >= stats["median"]  # seconds
        assert page.locator("#conn").get_attribute("data-state") == "live"
        assert errors == []
    finally:
        stop.set()
        page.context.close()
        collector.join(5)


# The page's per-camera state fed 20,000 track messages (each with a new track id) and 5,000
# events in Chromium: everything it keeps stays at its cap.
CAPS = """async () => {
  const { CameraState } = await import('/ui/js/live.js');
  const c = new CameraState('x');
  for (let f = 0; f < 20000; f++) {
    c.addTracks({ v: 1, stream: 'x', seq: f, frame: f, ts: f,
      tracks: [[f, 0, 0.9, 1, 2, 30, 40], [f + 1e6, 0, 0.8, 5, 6, 50, 60]] });
    c.recordDelay(0.05);
  }
  for (let i = 0; i < 5000; i++) c.addEvent({ kind: 'line_cross', ts: i });
  const points = Math.max(...[...c.trails.values()].map((t) => t.points.length));
  return { ring: c.ring.size, trails: c.trails.size, points, events: c.events.length,
    delays: c.delays.length, count: c.delayCount };
}"""


def test_the_page_state_is_capped_over_thousands_of_frames(running: Running, browser: Any) -> None:
    page = browser.new_context().new_page()
    try:
        page.goto(running.srv.base + "/")
        caps = page.evaluate(CAPS)
        assert caps["ring"] == 64 and caps["trails"] <= 256 and caps["points"] <= 24
        assert caps["events"] == 200 and caps["delays"] == 512 and caps["count"] == 20000
    finally:
        page.context.close()


def test_a_wrong_key_shows_an_error(running: Running, browser: Any) -> None:
    page = browser.new_context().new_page()
    try:
        page.goto(running.srv.base + "/")
        page.fill("#login-key", "not-the-right-key-000000")
        page.click("#login-submit")
        error = page.locator("#login-error")
        wait_until(lambda: "not valid" in error.inner_text(), 10, "the error shown")
        assert page.locator("#login").is_visible() and page.locator("#login-key").is_visible()
        assert page.evaluate("sessionStorage.length") == 0
    finally:
        page.context.close()


def test_drawing_a_line_creates_the_rule_and_it_counts(running: Running, browser: Any) -> None:
    srv = running.srv
    page = _signed_in(browser, srv)
    try:
        # a camera from the page: first a URL the server refuses, in words; then the clip
        page.fill("#add-camera [name=id]", "walk")
        page.fill("#add-camera [name=url]", "/etc/passwd")
        page.click("#add-camera button[type=submit]")
        wait_until(lambda: page.inner_text("#add-error").strip(), 10, "the refusal shown")
        assert srv.request("GET", "/api/streams/walk")[0] == 404
        page.fill("#add-camera [name=url]", "people.mp4")
        page.click("#add-camera button[type=submit]")
        page.click('figure[data-stream="walk"]')
        wait_until(lambda: _stats(page, "walk").get("drawn", 0) >= 1, 60, "walk's preview")
        page.click("#draw-line")
        box = page.locator("#camera-canvas").bounding_box()
        # a vertical line at x = 0.8, drawn bottom to top: walking left to right is "in"; the
        # clip's first person passes it about 19 s in
        x = box["x"] + 0.8 * box["width"]
        page.mouse.move(x, box["y"] + 0.95 * box["height"])
        page.mouse.down()
        page.mouse.move(x, box["y"] + 0.5 * box["height"], steps=5)
        page.mouse.move(x, box["y"] + 0.05 * box["height"], steps=5)
        page.mouse.up()
        page.fill("#rule-id", "door")
        page.click("#rule-save")
        page.wait_for_selector("#rule-form[hidden]", state="attached")
        status, lines = srv.request("GET", "/api/streams/walk/lines")
        assert status == 200 and [r["id"] for r in lines] == ["door"]
        (p1, p2), classes = lines[0]["points"], lines[0]["classes"]
        assert p1 == pytest.approx([0.8, 0.95], abs=0.01)
        assert p2 == pytest.approx([0.8, 0.05], abs=0.01)
        assert classes == ["person"]
        count = page.locator('#counts [data-count="door"]')
        wait_until(lambda: count.count() and int(count.inner_text()) >= 1, 120, "door counting")
        assert srv.request("GET", "/api/counts")[1]["walk"]["lines"]["door"]["in"]["person"] >= 1
    finally:
        page.context.close()
        srv.request("DELETE", "/api/streams/walk", key=KEY)


def _motion_cells(page: Any, sid: str) -> int:
    """How many motion-mask cells the camera view tinted in its last drawing."""
    drawn = page.evaluate("window.vigil.drawn()") or {}
    return int((drawn.get(sid) or {}).get("motion") or 0)


def test_capacity_effective_fps_and_the_motion_mask(running: Running, browser: Any) -> None:
    """The grid shows the machine's capacity as GET /api/capacity measures it and each tile's
    effective fps; a camera that gates its detector on motion can show its mask over the
    preview, and one that does not has the button off."""
    srv = running.srv
    body = {"id": "gated", "url": "people.mp4", "fps": 5, "loop": True, "motion": {"enabled": True}}
    assert srv.request("POST", "/api/streams", body, key=KEY)[0] == 201
    errors: list[str] = []
    page = _signed_in(browser, srv, errors)
    try:
        panel = page.locator("#capacity")
        wait_until(lambda: panel.get_attribute("data-streams") == "2", 30, "capacity of 2 streams")
        cap = srv.request("GET", "/api/capacity", key=KEY)[1]
        text = panel.inner_text()
        assert f"{cap['request']['width']}x{cap['request']['height']}" in text and "ms/s" in text
        # one task: the numbers and the meter drawn from the same reply
        shown = page.eval_on_selector(
            "#capacity",
            "c => [Number(c.dataset.used), Number(c.dataset.budget),"
            " document.getElementById('capacity-meter').value]",
        )
        used, budget, meter = (float(v) for v in shown)
        assert budget > 0 and meter == pytest.approx(min(1.0, used / budget), abs=1e-6)
        qos = page.locator('figure[data-stream="gated"] .qos')
        wait_until(lambda: "effective fps" in (qos.get_attribute("title") or ""), 20, "qos title")

        page.evaluate("location.hash = '#/camera/people'")  # no motion gating there
        page.wait_for_selector("#motion-toggle[disabled]", state="attached")
        page.evaluate("location.hash = '#/camera/gated'")
        eff = page.locator('#health tr[data-key="effective fps"] td')
        wait_until(lambda: eff.count() and "fps" in eff.inner_text(), 20, "effective fps row")
        page.wait_for_selector("#motion-toggle:not([disabled])")
        page.click("#motion-toggle")
        wait_until(lambda: _motion_cells(page, "gated"), 60, "moving cells tinted over the preview")
        page.click("#motion-toggle")  # off again: the mask is no longer drawn
        wait_until(lambda: not _motion_cells(page, "gated"), 20, "the mask gone")
        assert not errors, errors
    finally:
        page.context.close()
        srv.request("DELETE", "/api/streams/gated", key=KEY)


def test_session_token_and_preview_over_http_and_websocket(running: Running) -> None:
    srv = running.srv
    assert srv.request("GET", "/api/session")[1]["auth"] is True
    assert srv.request("POST", "/api/session", key="wrong-key-0000000000")[0] == 403
    status, body = srv.request("POST", "/api/session", key=KEY)
    assert status == 200 and body["expires_in"] == 600
    token = body["token"]
    assert KEY not in token
    req = urllib.request.Request(srv.base + "/api/streams/people/counts/reset", method="POST")
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:  # the token stands for the key
        assert r.status == 200
    with urllib.request.urlopen(srv.base + "/", timeout=10) as r:
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    protocols = ["vigil.v1", f"vigil.token.{token}"]
    with connect(srv.ws, subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "vigil.v1"
        ws.send(json.dumps({"op": "preview", "streams": ["people"]}))
        while isinstance(data := ws.recv(timeout=30), str):
            pass
        header, jpeg = unpack(data)
        assert header["stream"] == "people" and header["width"] == 640
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (header["height"], 640, 3)
    with pytest.raises(InvalidStatus):
        connect(srv.ws, subprotocols=["vigil.v1", "vigil.token.forged.1.2.3"])  # type: ignore[list-item]
    req = urllib.request.Request(srv.base + "/api/session", method="DELETE")
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204
    with pytest.raises(InvalidStatus):  # signed out
        connect(srv.ws, subprotocols=protocols)  # type: ignore[arg-type]


def test_the_page_reconnects_by_itself_after_a_server_restart(
    running: Running, browser: Any
) -> None:
    page = _signed_in(browser, running.srv)
    try:
        wait_until(lambda: _stats(page, "people").get("drawn", 0) >= 2, 60, "previews drawn")
        conn = page.locator("#conn")
        running.stop()
        wait_until(lambda: conn.get_attribute("data-state") == "reconnecting", 20, "noticed")
        running.start()
        drawn = _stats(page, "people")["drawn"]
        # the same session (tokens are signed with the configured secret), no sign-in again
        wait_until(lambda: conn.get_attribute("data-state") == "live", 60, "reconnected")
        wait_until(lambda: _stats(page, "people")["drawn"] >= drawn + 3, 60, "previews again")
        assert not page.locator("#login").is_visible()
    finally:
        page.context.close()


def _watched(srv: Server) -> float:
    _, text = srv.request("GET", "/metrics")
    line = next(x for x in text.splitlines() if x.startswith("vigil_preview_watched_streams "))
    return float(line.split()[1])


def test_the_mjpeg_endpoint_and_no_watcher_left_behind(running: Running) -> None:
    srv = running.srv
    assert srv.request("GET", "/api/streams/nothing/preview.mjpeg")[0] == 404
    wait_until(lambda: _watched(srv) == 0, 30, "no camera watched before")
    with urllib.request.urlopen(srv.base + "/api/streams/people/preview.mjpeg", timeout=30) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=")
        for _ in range(2):
            assert r.readline() == b"--vigil-preview\r\n"
            assert r.readline() == b"Content-Type: image/jpeg\r\n"
            size = int(r.readline().split(b":")[1])
            assert r.readline() == b"\r\n"
            jpeg = r.read(size)
            assert r.readline() == b"\r\n"
            img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and img.shape[1] == 640
        assert _watched(srv) == 1
    wait_until(lambda: _watched(srv) == 0, 30, "the camera unwatched once the reader left")
