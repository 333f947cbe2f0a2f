"""Property-based tests (Hypothesis) of every parser of outside input: whatever comes in, the
answer is a value or a one-line refusal, never a traceback, and nothing secret leaks.

New parsers join with :func:`tests.strategies.assert_refuses_cleanly` and the strategies there.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.checkpoint import _RestrictedUnpickler, load_checkpoint_records
from pipeline.config import StreamConfig, VigilConfig, load_config, parse_section, parse_stream
from pipeline.credentials import has_secrets, public_url, redact, scrub, url_secrets
from pipeline.encode import encode_message
from pipeline.live_step import Published
from pipeline.types import Tracks, VigilError
from server.hub import Hub
from server.urls import check_stream_url
from tests import strategies as S

PROPS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ------------------------------------------------------------------------------------ config
@PROPS
@given(S.dataclass_mappings(StreamConfig))
def test_stream_entries_parse_or_refuse_in_one_line(data: object) -> None:
    stream = S.assert_refuses_cleanly(parse_stream, data)
    if stream is not None:
        assert isinstance(stream, StreamConfig) and stream.url == stream.url.strip()
        assert 0.0 <= stream.fps <= 240.0 and stream.rtsp_transport in ("tcp", "udp")


@PROPS
@given(S.dataclass_mappings(VigilConfig))
def test_whole_configs_parse_or_refuse_in_one_line(data: object) -> None:
    cfg = S.assert_refuses_cleanly(lambda d: parse_section(VigilConfig, d), data)
    assert cfg is None or isinstance(cfg, VigilConfig)


@PROPS
@given(st.one_of(S.hostile_text(400), S.dataclass_mappings(VigilConfig).map(json.dumps)))
def test_config_files_load_or_refuse_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    S.assert_refuses_cleanly(load_config, path)


# --------------------------------------------------------------------------------- WebSocket
def _published(stream: str, seq: int) -> Published:
    t = Tracks(
        np.array([[1, 2, 3, 4]], np.float32),
        np.array([1], np.int64),
        np.array([0], np.int32),
        np.array([0.9], np.float32),
        np.array([0], np.int32),
        stream,
        seq,
        0.0,
    )
    return Published(stream, seq, 1.0, encode_message(t, stream, seq, 1.0), t)


@PROPS
@given(st.one_of(S.hostile_json_text(), S.json_values().map(json.dumps)))
def test_websocket_messages_get_a_reply_and_errors_change_nothing(text: str) -> None:
    hub = Hub(queue_size=8, class_names=["person", "car"], max_list=16)
    hub.publish(_published("cam", 3))
    client = hub.connect(lambda _: None)
    hub.handle(client, '{"op":"subscribe","streams":["cam"],"classes":["car"]}')
    before = (client.streams, client.classes)
    client.queue.clear()
    ok = hub.handle(client, text)
    reply = json.loads(client.queue[0][0])
    assert reply["op"] in ("subscribed", "pong", "error")
    assert ok == (reply["op"] != "error")
    if not ok:
        assert len(client.queue) == 1 and (client.streams, client.classes) == before
        assert len(reply["error"]) < 200
    if client.streams is not None:
        assert len(client.streams) <= 16


@PROPS
@given(
    st.fixed_dictionaries(
        {"op": st.just("subscribe")},
        optional={
            "streams": st.lists(S.hostile_text(10), max_size=40),
            "classes": st.lists(
                st.one_of(st.integers(-3, 5), st.sampled_from(["person", "car", "x"])), max_size=5
            ),
            "last_seq": st.dictionaries(S.hostile_text(8), st.integers(-5, 10**12), max_size=40),
        },
    )
)
def test_subscriptions_are_capped_and_snapshots_follow_last_seq(req: dict) -> None:
    hub = Hub(queue_size=64, class_names=["person", "car"], max_list=16)
    hub.publish(_published("cam", 3))
    client = hub.connect(lambda _: None)
    ok = hub.handle(client, json.dumps(req))
    too_long = len(req.get("streams", [])) > 16 or len(req.get("last_seq", {})) > 16
    bad_class = any(c not in (0, 1, "person", "car") for c in req.get("classes", []))
    assert ok == (not too_long and not bad_class)
    snapshots = [json.loads(t) for t, _ in list(client.queue)[1:]]
    if ok and "last_seq" in req and client.wants("cam"):
        # a snapshot unless the client already has exactly the latest seq (lower: it missed
        # messages; higher: the server restarted and counts from 0 again)
        assert len(snapshots) == (0 if req["last_seq"].get("cam") == 3 else 1)
    else:
        assert snapshots == []


# -------------------------------------------------------------------------------- stream URLs
@PROPS
@given(S.stream_urls(), st.booleans(), st.sampled_from([(), ("127.0.0.1", "cam.local")]))
def test_url_policy_accepts_only_safe_urls(
    tmp_path: Path, url: str, http: bool, hosts: tuple
) -> None:
    root = tmp_path / "media"
    root.mkdir(exist_ok=True)
    (root / "clip.mp4").write_bytes(b"x")
    out = S.assert_refuses_cleanly(lambda u: check_stream_url(u, root, http, hosts), url)
    if out is None:
        return
    assert not any(ch in out for ch in S.CONTROL)
    lowered = out.lower()
    if lowered.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        assert http or not lowered.startswith("http")
        assert not any(ch.isspace() for ch in out)
    else:
        assert Path(out).resolve().is_relative_to(root.resolve()) and Path(out).exists()


@PROPS
@given(S.secret_urls())
def test_no_secret_survives_redaction(case: tuple[str, list[str]]) -> None:
    url, secrets = case
    assert has_secrets(url)
    found = url_secrets(url)
    line = f"[concat @ 0x55] Impossible to open '{url}'; password was {secrets[0]}"
    for shown in (redact(url), public_url(url), public_url(url, mask_query=False),
                  scrub(line, found)):  # fmt: skip
        for secret in secrets:
            assert secret not in shown, (url, shown)


@PROPS
@given(S.hostile_text(300))
def test_redaction_never_fails_and_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
    assert scrub(text, url_secrets(text)) == scrub(scrub(text, url_secrets(text)), [])


# ----------------------------------------------------------------------- checkpoint unpickler
@pytest.fixture(scope="module")
def torch_zip() -> bytes:
    buf = io.BytesIO()
    torch.save({"model": 1}, buf)
    return buf.getvalue()


def _with_pickle(torch_zip: bytes, data: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(torch_zip))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            body = data if item.filename.endswith("data.pkl") else src.read(item)
            dst.writestr(item, body)
    return out.getvalue()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_random_pickles_never_execute_anything(
    tmp_path: Path, torch_zip: bytes, data: st.DataObject
) -> None:
    marker = tmp_path / "pwned"
    program = data.draw(S.pickle_programs(command=f"touch {marker}"))
    S.TRIPPED.clear()
    # the unpickler alone (Python's own errors for broken opcode streams), then the way users
    # meet it: load_checkpoint_records on a real torch archive, which refuses in one line
    with contextlib.suppress(
        pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
        AttributeError, RuntimeError, OverflowError, MemoryError, RecursionError,
    ):  # fmt: skip
        _RestrictedUnpickler(io.BytesIO(program)).load()
    path = tmp_path / "ckpt.pt"
    path.write_bytes(_with_pickle(torch_zip, program))
    S.assert_refuses_cleanly(load_checkpoint_records, path)
    assert not marker.exists() and S.TRIPPED == []


def test_a_refusal_that_is_not_one_line_fails_the_check() -> None:
    """The check itself can fail: a multi-line refusal or a stray exception is caught."""
    with pytest.raises(AssertionError):
        S.assert_refuses_cleanly(lambda _: (_ for _ in ()).throw(VigilError("a\nb")), None)
    with pytest.raises(KeyError):
        S.assert_refuses_cleanly(lambda _: {}["x"], None)
