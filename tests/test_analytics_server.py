"""Analytics on a real `vigil serve` playing the sample clip: a line across the middle counts
the people walking through, a zone around the table measures how long they stand there.
Rules CRUD with bad input, live events on the WebSocket, stored events with paging, counts,
and a webhook receiver getting the same events, signed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import websockets
import yaml

from benchmarks.serving import Server, serve
from tests.factories import REPO, SAMPLE_CLIP, wait_until

KEY = "analytics-key-0123456789"
SECRET = "hook-secret-0123456789"
RULES = yaml.safe_load((REPO / "configs" / "sample-analytics.yaml").read_text())


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append((body, self.headers.get("X-Vigil-Signature", "")))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hook() -> Iterator[Any]:
    srv: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    srv.bodies = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, hook: Any) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("analytics")
    media = tmp / "media"
    media.mkdir()
    shutil.copy(SAMPLE_CLIP, media / "people.mp4")
    cfg = {
        "server": {"media_root": str(media), "drain_timeout_s": 3.0},
        "auth": {"keys": [KEY], "mutations_per_minute": 1000},
        "tracker": {"embedder": "histogram"},
        "sinks": {"webhooks": [{"id": "ops", "secret": SECRET, "batch_wait_s": 0.05,
                                "url": f"http://127.0.0.1:{hook.server_port}/events"}]},
    }  # fmt: skip
    with serve(cfg, tmp) as server:
        yield server


def _add_people(srv: Server) -> None:
    """The sample clip as stream "people", its rules in the REST body (started once)."""
    if srv.request("GET", "/api/streams/people")[0] == 404:
        body = {"id": "people", "url": "people.mp4", "fps": 10, **RULES}
        status, reply = srv.request("POST", "/api/streams", body, key=KEY)
        assert status == 201, reply
    srv.wait_state("people", "live")


async def _events(srv: Server, want: set[str], timeout: float) -> list[dict[str, Any]]:
    """Subscribe to events only, start the stream, and collect event messages until every
    ``kind:rule`` in ``want`` came; then ask for the counts (the last item)."""
    kinds = ["line_cross", "zone_enter", "zone_exit", "zone_loiter"]
    got: list[dict[str, Any]] = []
    async with websockets.connect(f"{srv.ws}?token={KEY}") as ws:
        await ws.send(json.dumps({"op": "subscribe", "kinds": kinds, "tracks": False}))
        while (r := json.loads(await ws.recv())).get("op") != "subscribed":
            assert "op" not in r, r  # live messages may come before the reply
        await asyncio.get_running_loop().run_in_executor(None, _add_people, srv)
        deadline = time.monotonic() + timeout
        while not want <= {f"{e['kind']}:{e['rule']}" for e in got}:
            left = deadline - time.monotonic()
            assert left > 0, f"events so far: {[e['kind'] for e in got]}"
            msg = json.loads(await asyncio.wait_for(ws.recv(), left))
            assert msg.get("type") == "event" and msg["kind"] in kinds, msg  # no tracks
            got.append(msg)
        await ws.send(json.dumps({"op": "counts", "streams": ["people"]}))
        while (reply := json.loads(await ws.recv())).get("op") != "counts":
            pass
        got.append(reply)
    return got


def test_live_events_for_the_sample_clip(srv: Server) -> None:
    # the first person crosses the middle at about 6.6 s, stands at the table from 7.4 s,
    # is reported loitering past 10 s there and leaves at about 18.8 s
    want = {"line_cross:middle", "zone_enter:table", "zone_loiter:table", "zone_exit:table"}
    got = asyncio.run(_events(srv, want, 120))
    counts = got.pop()["counts"]["people"]
    cross = got[0]  # the stream started after the subscription: nothing was missed
    assert (cross["rule"], cross["dir"], cross["class"], cross["stream"]) == (
        "middle", "in", "person", "people",
    )  # fmt: skip
    assert len(cross["box"]) == 4 and cross["ts"] > 1e9 and cross["pts"] > 0
    leave = next(e for e in got if e["kind"] == "zone_exit")
    assert leave["rule"] == "table" and leave["dwell_s"] > 8 and leave["reason"] == "left"
    assert counts["lines"]["middle"]["in"]["person"] >= 1
    assert counts["zones"]["table"]["exited"]["person"] >= 1


def test_rules_crud_with_bad_input(srv: Server) -> None:
    _add_people(srv)
    base = "/api/streams/people"
    line = {"id": "door", "points": [[0.2, 0.0], [0.2, 1.0]], "classes": ["person"]}
    assert srv.request("POST", f"{base}/lines", line)[0] == 401  # an API key for every change
    assert srv.request("POST", f"{base}/lines", line, key="wrong-key-0000000000")[0] == 403
    status, body = srv.request("POST", f"{base}/lines", line, key=KEY)
    assert status == 201 and body["anchor"] == "bottom_center"
    assert srv.request("POST", f"{base}/lines", line, key=KEY)[0] == 409
    assert (
        srv.request("POST", f"{base}/zones", {**line, "polygon": line["points"]}, key=KEY)[0] == 422
    )
    bad = [
        ("zones", {"id": "z", "polygon": [[0.1, 0.1], [0.2, 0.2]]}, "at least 3"),
        ("zones", {"id": "z", "polygon": [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]}, "on one line"),
        ("zones", {"id": "z", "polygon": [[0.1, 0.1], [0.2, 0.2], [0.1, 0.1]]}, "3 distinct"),
        ("lines", {"id": "l", "points": [[0.1, 0.1], [1.2, 0.2]]}, "less than or equal to 1"),
        ("lines", {"id": "l", "points": [[0.1, 0.1], [0.2, 0.2]], "classes": ["unicorn"]},
         "unknown class 'unicorn'"),
        ("lines", {"id": "bad id", "points": [[0.1, 0.1], [0.2, 0.2]]}, "pattern"),
        ("lines", {"id": "l", "points": [[0.1, 0.1], [0.2, 0.2]], "speed": 3}, "Extra inputs"),
    ]  # fmt: skip
    for kind, rule, detail in bad:
        status, body = srv.request("POST", f"{base}/{kind}", rule, key=KEY)
        assert status == 422 and detail in json.dumps(body), (rule, body)
    assert srv.request("GET", f"{base}/lines/door")[1]["points"] == [[0.2, 0.0], [0.2, 1.0]]
    moved = {**line, "points": [[0.3, 0.0], [0.3, 1.0]]}
    assert srv.request("PUT", f"{base}/lines/door", moved, key=KEY)[0] == 200
    assert srv.request("PUT", f"{base}/lines/other", moved, key=KEY)[0] == 422  # id mismatch
    assert srv.request("PUT", f"{base}/lines/nope", {**moved, "id": "nope"}, key=KEY)[0] == 404
    ids = [r["id"] for r in srv.request("GET", f"{base}/lines")[1]]
    assert ids == ["middle", "exit", "door"]
    assert srv.request("DELETE", f"{base}/lines/door", key=KEY)[0] == 204
    assert srv.request("DELETE", f"{base}/lines/door", key=KEY)[0] == 404
    assert srv.request("GET", "/api/streams/nope/rules")[0] == 404
    everything = srv.request("GET", f"{base}/rules")[1]
    status, body = srv.request("PUT", f"{base}/rules", everything, key=KEY)  # unchanged
    assert status == 200 and body == everything
    assert [r["id"] for r in body["lines"]] == ["middle", "exit"]


def test_stored_events_paging_counts_reset_and_the_webhook(srv: Server, hook: Any) -> None:
    _add_people(srv)
    wait_until(lambda: len(srv.request("GET", "/api/events?stream=people&kind=line_cross")[1]
                           ["events"]) >= 2, 90, "two crossings stored")  # fmt: skip
    seen: list[int] = []
    cursor = None
    while True:
        q = "/api/events?stream=people&limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = srv.request("GET", q)
        assert status == 200 and len(page["events"]) <= 2
        seen += [e["seq"] for e in page["events"]]
        if (cursor := page["next"]) is None:
            break
    assert seen == sorted(set(seen)) and len(seen) >= 4  # paged through, each once, in order
    newest = srv.request("GET", "/api/events?stream=people&order=desc&limit=1")[1]["events"]
    assert newest[0]["seq"] == seen[-1] or newest[0]["seq"] > seen[-1]
    assert srv.request("GET", "/api/events?kind=teleport")[0] == 422
    assert srv.request("GET", "/api/events?limit=0")[0] == 422

    # stored first: a crossing between the two requests can only add to the live counts
    stored = srv.request("GET", "/api/streams/people/counts?since=0")[1]
    live = srv.request("GET", "/api/streams/people/counts")[1]
    assert stored["lines"]["middle"]["in"]["person"] >= 1
    assert live["lines"]["middle"]["in"]["person"] >= stored["lines"]["middle"]["in"]["person"]
    assert srv.request("POST", "/api/streams/people/counts/reset")[0] == 401
    status, zeroed = srv.request("POST", "/api/streams/people/counts/reset", key=KEY)
    assert status == 200 and zeroed["lines"]["middle"] == {"in": {}, "out": {}}
    assert zeroed["since_ts"] > time.time() - 60
    health = srv.request("GET", "/api/streams/people/health")[1]
    assert health["enabled"] and health["checks"]["black"] is False and health["brightness"] > 50

    ready = srv.request("GET", "/readyz")[1]
    assert ready["outputs"]["webhook:ops"]["sent"] >= 1 and ready["outputs"]["event_store"]["ok"]
    assert SECRET not in json.dumps(ready)
    text = srv.request("GET", "/metrics")[1]
    assert 'vigil_events_total{kind="line_cross",stream="people"}' in text
    assert 'vigil_sink_sent_total{sink="webhook:ops"}' in text and SECRET not in text

    def received() -> set[int]:
        return {e["seq"] for body, _ in list(hook.bodies) for e in json.loads(body)["events"]}

    # the webhook gets what the store has (each output has its own thread and batch timing)
    wait_until(lambda: set(seen) <= received(), 30, "the webhook received the stored events")
    for body, sig in list(hook.bodies):
        want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(sig, want)
