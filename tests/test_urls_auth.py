from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.config import AuthConfig, StreamConfig, parse_stream
from pipeline.types import VigilError
from server.auth import ApiKeys, RateLimiter
from server.urls import check_stream_url


@pytest.fixture
def root(tmp_path: Path) -> Path:
    media = tmp_path / "media"
    media.mkdir()
    (media / "clip.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    (media / "escape.mp4").symlink_to(tmp_path / "secret.mp4")
    return media


def test_allowed_urls(root: Path) -> None:
    assert check_stream_url("rtsp://user:pw@10.0.0.5:554/s", root, False).startswith("rtsp://")
    assert check_stream_url("RTSPS://cam/x", root, False).startswith("RTSPS://")
    assert check_stream_url("clip.mp4", root, False) == str(root / "clip.mp4")
    assert check_stream_url(str(root / "clip.mp4"), root, False) == str(root / "clip.mp4")
    assert check_stream_url("http://cam/x.m3u8", root, True) == "http://cam/x.m3u8"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("file:clip.mp4", "scheme 'file' is not allowed"),
        ("concat:a.mp4|b.mp4", "scheme 'concat' is not allowed"),
        ("subfile:,,start,0,end,0,,:/etc/passwd", "scheme 'subfile'"),
        ("http://example.com/x.mp4", "http(s) stream urls are disabled"),
        ("../secret.mp4", "outside the media root"),
        ("/etc/passwd", "outside the media root"),
        ("escape.mp4", "outside the media root"),
        ("missing.mp4", "not found"),
        ("rtsp:///nohost", "no host"),
        ("clip.mp4\n", "control characters"),
    ],
)
def test_refused_urls(root: Path, url: str, message: str) -> None:
    with pytest.raises(VigilError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_stream_url(url, root, False)


def test_stream_entry_validation() -> None:
    ok = parse_stream({"id": "cam-1", "url": " rtsp://h/x "})
    assert ok == StreamConfig("cam-1", "rtsp://h/x", 10.0, True, True, "tcp")
    for bad, msg in [
        ({"id": "bad id", "url": "x"}, r"stream id: 'bad id' must match"),
        ({"url": "x"}, "stream id: required"),
        ({"id": "a", "url": ""}, "stream a: url: must not be empty"),
        ({"id": "a"}, "stream a: url: required"),
        ({"id": "a", "url": "x", "fps": -1}, r"stream a: fps: -1.0 is outside \[0, 240\]"),
        ({"id": "a", "url": "x", "loop": "yes"}, "stream a: loop: expected true or false"),
        ({"id": "a", "url": "x", "rtsp_transport": "sctp"}, "rtsp_transport: 'sctp' is not one"),
        ({"id": "a", "url": "x", "colour": 1}, "stream a: unknown key 'colour'"),
        ("not a mapping", "stream entry: expected a mapping"),
    ]:
        with pytest.raises(VigilError, match=msg) as err:
            parse_stream(bad)
        assert "\n" not in str(err.value)


def test_keys_hashed_and_checked(tmp_path: Path) -> None:
    key = "k" * 24
    keys_file = tmp_path / "keys.env"
    other = "o" * 20
    keys_file.write_text(
        f"# comment\nVIGIL_KEY={other}\nsha256:{hashlib.sha256(b'z' * 16).hexdigest()}\n"
    )
    keys = ApiKeys(AuthConfig(keys=(key,), keys_file=str(keys_file)))
    assert keys.enabled
    assert keys.check(key) and keys.check(other) and keys.check("z" * 16)
    assert not keys.check("k" * 23) and not keys.check(None) and not keys.check("")
    assert key not in repr(keys.__dict__)  # only digests are kept
    assert not ApiKeys(AuthConfig()).enabled
    with pytest.raises(VigilError, match="at least 16"):
        ApiKeys(AuthConfig(keys=("short",)))
    with pytest.raises(VigilError, match="cannot read keys file"):
        ApiKeys(AuthConfig(keys_file=str(tmp_path / "none")))


def test_rate_limiter() -> None:
    rl = RateLimiter(per_minute=3)
    assert [rl.allow("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b", now=0.0)
    assert rl.allow("a", now=20.0)  # one token back after 20 s
    assert not rl.allow("a", now=20.0)


def test_rate_limiter_forgets_the_least_recently_seen_identity() -> None:
    rl = RateLimiter(per_minute=2, max_clients=3)
    for who in ("a", "b", "c"):
        assert rl.allow(who, now=0.0) and rl.allow(who, now=0.0)
    assert not rl.allow("a", now=1.0)  # a is out of tokens and now the most recent
    assert rl.allow("d", now=1.0)  # evicts b, the least recently seen
    assert list(rl._buckets) == ["c", "a", "d"]
    assert not rl.allow("a", now=1.0)  # a kept its empty bucket: no bypass by churn
    assert rl.allow("b", now=1.0)  # b comes back with a full bucket
    for i in range(10_000):
        rl.allow(f"x{i}", now=2.0)
    assert len(rl._buckets) == 3
