"""The dashboard in Debian's Firefox ESR (headless, driven over WebDriver BiDi, which Firefox
speaks itself: tests/firefox_bidi.py) against a real `vigil serve` with API keys playing the
sample clip: sign-in, live previews that change, boxes drawn in the class colour at the edges
the page says, the capacity panel, the camera view, and no console error or uncaught exception.
The Chromium tests (test_dashboard.py) cover the rest of the page's behaviour."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import numpy as np
import pytest

from benchmarks.serving import Server, serve
from tests.factories import SAMPLE_CLIP, wait_until
from tests.firefox_bidi import Firefox

KEY = "firefox-test-key-0123456789"
PERSON_RED = (255, 59, 48)  # classColor(0) in server/static/js/draw.js

# One task: what the tile drew last, a hash of its pixels, and the pixels across each box's
# left edge.
PROBE = """(() => {
  const drawn = (window.vigil.drawn() || {}).people || null;
  const canvas = document.querySelector('figure[data-stream="people"] canvas');
  if (!drawn || !canvas) return null;
  const ctx = canvas.getContext('2d');
  const all = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let hash = 0;
  for (let i = 0; i < all.length; i += 97) hash = (hash * 31 + all[i]) | 0;
  const edges = drawn.boxes.map((b) => {
    const y = Math.round((b.box[1] + b.box[3]) / 2);
    return Array.from(ctx.getImageData(b.box[0] - 3, y, 7, 1).data);
  });
  return { hash, frame: drawn.frame, classes: drawn.boxes.map((b) => b.cls), edges };
})()"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("firefox")
    media = tmp / "media"
    media.mkdir()
    shutil.copy(SAMPLE_CLIP, media / "people.mp4")
    cfg = {
        "server": {"media_root": str(media), "drain_timeout_s": 2.0},
        "auth": {"keys": [KEY]},
        "tracker": {"embedder": "histogram"},
        "streams": [{"id": "people", "url": "people.mp4", "fps": 10, "loop": True}],
    }
    with serve(cfg, tmp) as s:
        s.wait_state("people", "live", 60)
        yield s


@pytest.fixture(scope="module")
def firefox() -> Iterator[Firefox]:
    exe = shutil.which("firefox-esr")
    if exe is None:
        pytest.fail("firefox-esr is not installed: `make install` installs it")
    ff = Firefox(exe)
    yield ff
    ff.close()


def test_the_dashboard_works_in_firefox(srv: Server, firefox: Firefox) -> None:
    ff = firefox
    ff.navigate(srv.base + "/")
    wait_until(lambda: ff.evaluate("document.getElementById('login').open"), 20, "sign-in asked")
    ff.evaluate(
        f"document.getElementById('login-key').value = '{KEY}';"
        "document.getElementById('login-form').requestSubmit()"
    )
    wait_until(lambda: not ff.evaluate("document.getElementById('login').open"), 20, "signed in")
    stats = "(window.vigil.stats().people || {}).drawn || 0"
    wait_until(lambda: ff.evaluate(stats) >= 3, 60, "previews drawn in Firefox")
    first = wait_until(lambda: ff.evaluate(PROBE), 20, "the tile drawn")
    wait_until(lambda: ff.evaluate(PROBE)["hash"] != first["hash"], 30, "the preview changing")
    seen = wait_until(lambda: (p := ff.evaluate(PROBE)) and p["edges"] and p, 90, "boxes drawn")
    for cls, edge in zip(seen["classes"], seen["edges"], strict=True):
        pixels = np.array(edge, np.int32).reshape(-1, 4)[:, :3]
        assert cls != 0 or (np.abs(pixels - PERSON_RED).max(1) < 40).any(), pixels
    wait_until(lambda: ff.evaluate("document.getElementById('capacity').dataset.streams") == "1",
               20, "the capacity panel")  # fmt: skip
    assert ff.evaluate("document.getElementById('conn').dataset.state") == "live"
    assert KEY not in str(ff.evaluate("JSON.stringify(sessionStorage)"))

    ff.evaluate("location.hash = '#/camera/people'")
    rows = "document.querySelectorAll('#health tr').length"
    wait_until(lambda: ff.evaluate(rows) >= 8, 20, "the camera view's health table")
    wait_until(lambda: ff.evaluate("(window.vigil.drawn() || {}).people?.frame ?? null")
               is not None, 30, "the camera view drawing")  # fmt: skip
    ff.drain()
    assert ff.errors == [], ff.errors


def test_firefox_bidi_reports_page_errors(srv: Server, firefox: Firefox) -> None:
    """The error collection the test above relies on does see an error (so its empty list
    means something)."""
    before = len(firefox.errors)
    firefox.evaluate("setTimeout(() => { throw new Error('deliberate-test-error'); }, 0); 1")
    wait_until(lambda: firefox.drain() and len(firefox.errors) > before, 10, "the error reported")
    assert "deliberate-test-error" in firefox.errors[-1]
    del firefox.errors[before:]
