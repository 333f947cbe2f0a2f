"""Shared fixtures. Tests that need ../shared/data skip with a clear reason where it is absent."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.factories import REPO, SAMPLE_CLIP, SHARED_DATA, shared

__all__ = ["REPO", "SAMPLE_CLIP", "SHARED_DATA", "shared"]


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.fail("ffmpeg is not installed: `make install` installs it")
    return exe


@pytest.fixture(scope="session")
def synthetic_clip(tmp_path_factory: pytest.TempPathFactory, ffmpeg: str) -> Path:
    """A 2 s, 320x240, 25 fps H.264 clip made with FFmpeg's test source (50 frames)."""
    path = tmp_path_factory.mktemp("clips") / "testsrc.mp4"
    subprocess.run(
        [ffmpeg, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=320x240:rate=25", "-t", "2", "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", "-g", "10", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 3-class YOLOv5n exported to ONNX at 128x128 (seed 0)."""
    import torch

    from models.export import export_onnx
    from models.yolov5 import YOLOv5

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_onnx(YOLOv5(nc=3).eval(), path, imgsz=128)
    return path
