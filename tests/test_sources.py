from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.credentials import has_secrets, public_url, scrub, url_secrets
from pipeline.sources import FFmpegSource, _concat_script, redact
from pipeline.types import VigilError


def test_video_decodes_every_frame_in_order(synthetic_clip: Path) -> None:
    src = FFmpegSource(str(synthetic_clip), stream_id="cam")
    assert (src.info.kind, src.info.width, src.info.height) == ("video", 320, 240)
    assert src.info.fps == pytest.approx(25.0)
    frames = list(src.frames())
    assert len(frames) == 50 == src.frames_decoded
    assert [f.index for f in frames] == list(range(50))
    assert frames[10].pts == pytest.approx(0.4)
    assert frames[0].image.shape == (240, 320, 3) and frames[0].image.dtype == np.uint8
    assert all(f.stream_id == "cam" for f in frames)
    assert src.decode_errors == 0


def test_max_frames(synthetic_clip: Path) -> None:
    assert len(list(FFmpegSource(str(synthetic_clip), max_frames=7).frames())) == 7


def test_folder_sorted_by_name(tmp_path: Path) -> None:
    for i, name in enumerate(["b.png", "a.png", "c.png"]):
        cv2.imwrite(str(tmp_path / name), np.full((48, 64, 3), 40 * (i + 1), np.uint8))
    (tmp_path / "notes.txt").write_text("not a frame")
    src = FFmpegSource(str(tmp_path), folder_fps=10)
    frames = list(src.frames())
    # a.png (80), b.png (40), c.png (120)
    assert [int(f.image.mean()) for f in frames] == [80, 40, 120]
    assert frames[2].pts == pytest.approx(0.2)


def test_corrupt_packets_are_decoded_past_and_counted(synthetic_clip: Path, tmp_path: Path) -> None:
    data = bytearray(synthetic_clip.read_bytes())
    rng = np.random.default_rng(0)
    for start in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):
        data[start : start + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    src = FFmpegSource(str(bad))
    n = sum(1 for _ in src.frames())
    assert n >= 40
    assert src.decode_errors > 0 and src.last_error


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.mp4", "source not found"),
        (lambda d: (d / "x.mp4").write_text("hello") and d / "x.mp4", "is not a readable video"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no image files"),
    ],
)
def test_bad_sources(tmp_path: Path, make: object, message: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(VigilError, match=message):
        FFmpegSource(str(path))


def test_dead_rtsp_url_fails_fast_with_redacted_credentials() -> None:
    with pytest.raises(VigilError) as err:
        FFmpegSource("rtsp://admin:secret@127.0.0.1:9/cam", timeout_s=2)
    assert "secret" not in str(err.value) and "***@127.0.0.1" in str(err.value)


def test_redact() -> None:
    assert redact("rtsp://u:p@h/x and rtsps://k@h2") == "rtsp://***@h/x and rtsps://***@h2"
    assert redact("rtsp://h/x") == "rtsp://h/x"
    assert redact("rtsp://a:p@ss@h/x?token=t0k&ch=1") == "rtsp://***@h/x?token=***&ch=1"


def test_public_url_masks_the_whole_query_and_secrets_are_found() -> None:
    url = "rtsp://admin:pa%40ss@10.0.0.7/s?Token=t0ken&channel=2"
    assert public_url(url) == "rtsp://***@10.0.0.7/s?Token=***&channel=***"
    assert public_url(url, mask_query=False) == "rtsp://***@10.0.0.7/s?Token=***&channel=2"
    assert set(url_secrets(url)) == {"admin", "pa%40ss", "pa@ss", "t0ken"}
    line = "Impossible to open 'x': user admin, password pa@ss refused"
    assert scrub(line, url_secrets(url)) == "Impossible to open 'x': user ***, password *** refused"
    assert has_secrets(url) and has_secrets("http://h/x?sig=abc") and not has_secrets("rtsp://h/x")
    assert public_url("clip.mp4") == "clip.mp4"


def test_the_ffconcat_script_quotes_the_url_and_refuses_line_breaks() -> None:
    script = _concat_script("rtsp://u:it's@h/x", {"rtsp_transport": "tcp"}).decode()
    assert script.splitlines() == [
        "ffconcat version 1.0", "file 'rtsp://u:it'\\''s@h/x'", "option rtsp_transport tcp",
    ]  # fmt: skip
    with pytest.raises(VigilError, match="control characters"):
        _concat_script("rtsp://u:p@h/x\nfile 'file:/etc/passwd'", {})


def test_missing_ffmpeg_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(VigilError, match="ffmpeg not found"):
        FFmpegSource("whatever.mp4")
