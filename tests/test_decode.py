"""The decode path: NVDEC when the FFmpeg in use has ``-hwaccel cuda`` and a GPU is present,
else the CPU decoder; probing without ffprobe; the choice in the replay summary."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.decode import (
    DecodePlan,
    choose_path,
    parse_ffmpeg_banner,
    parse_hwaccels,
    parse_version,
    resolve_decode,
)
from pipeline.sources import FFmpegSource
from pipeline.types import VigilError
from tests.factories import SAMPLE_CLIP, shared


def test_parse_the_hwaccel_list_of_this_ffmpeg(ffmpeg: str) -> None:
    out = subprocess.run([ffmpeg, "-hide_banner", "-hwaccels"], capture_output=True, text=True)
    methods = parse_hwaccels(out.stdout + out.stderr)
    assert methods and all(m.isidentifier() for m in methods)
    assert "Hardware" not in " ".join(methods)
    assert parse_hwaccels("Hardware acceleration methods:\nvdpau\n\n") == ("vdpau",)
    assert parse_hwaccels("Hardware acceleration methods:\n") == ()
    assert parse_version("ffmpeg version 7.0.2-static https://x Copyright") == "7.0.2-static"


def test_choose_path() -> None:
    assert choose_path("auto", ("vdpau", "cuda"), True)[0] == "cuda"
    assert choose_path("auto", ("vdpau", "cuda"), False) == (
        "",
        "auto: FFmpeg has the cuda hwaccel but no NVIDIA GPU is present",
    )
    assert choose_path("auto", ("vdpau",), True) == ("", "auto: this FFmpeg lists no cuda hwaccel")
    assert choose_path("cpu", ("cuda",), True)[0] == ""
    assert choose_path("cuda", ("cuda",), True)[0] == "cuda"
    with pytest.raises(VigilError, match="no cuda hwaccel"):
        choose_path("cuda", ("vdpau",), True)
    with pytest.raises(VigilError, match="no NVIDIA GPU"):
        choose_path("cuda", ("cuda",), False)


def test_input_flags() -> None:
    cpu = DecodePlan("ffmpeg", None, "", 0, "x", "")
    assert cpu.input_flags() == [] and cpu.path == "cpu"
    assert replace(cpu, threads=3).input_flags() == ["-threads", "3"]
    gpu = replace(cpu, hwaccel="cuda")
    assert gpu.input_flags() == ["-hwaccel", "cuda"] and gpu.path == "cuda"
    assert gpu.describe()["path"] == "cuda" and gpu.describe()["probe"] == "ffmpeg"


def test_banner_probe_reads_what_ffprobe_reads(ffmpeg: str) -> None:
    jpeg = shared("mot", "TUD-Stadtmitte", "img1", "000001.jpg")
    for path, expected in ((SAMPLE_CLIP, (768, 432, "10/1")), (jpeg, (640, 480, "25/1"))):
        out = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True)
        found = parse_ffmpeg_banner(out.stderr.decode())
        assert (found["width"], found["height"], found["avg_frame_rate"]) == expected
    assert parse_ffmpeg_banner("Stream #0:0: Audio: aac, 44100 Hz") == {}


def test_a_source_without_ffprobe_decodes_the_same_frames(ffmpeg: str) -> None:
    with_probe = resolve_decode(ffmpeg, "cpu")
    without = replace(with_probe, ffprobe=None, threads=1)
    a = FFmpegSource(str(SAMPLE_CLIP), max_frames=30, decode=with_probe)
    b = FFmpegSource(str(SAMPLE_CLIP), max_frames=30, decode=without)
    assert (a.info.width, a.info.height, a.info.fps) == (b.info.width, b.info.height, b.info.fps)
    fa, fb = list(a.frames()), list(b.frames())
    assert len(fa) == len(fb) == 30
    assert all((x.image == y.image).all() for x, y in zip(fa, fb, strict=True))
    with pytest.raises(VigilError, match="not a readable video"):
        FFmpegSource(str(Path(__file__)), decode=without)


def test_cuda_decode_on_a_machine_without_a_gpu(ffmpeg: str) -> None:
    from models.detector import nvidia_device_present

    if nvidia_device_present():
        pytest.skip("this machine has an NVIDIA GPU")
    assert resolve_decode(ffmpeg, "auto").path == "cpu"
    with pytest.raises(VigilError, match="cuda"):
        resolve_decode(ffmpeg, "cuda")


def test_replay_summary_names_the_decode_path(tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.replay import Replay
    from pipeline.wiring import build_decode

    cfg = load_config(None, {"tracker.embedder": "histogram", "source.decode_threads": 2})
    plan = build_decode(cfg.source)
    summary = Replay(FFmpegSource(str(SAMPLE_CLIP), max_frames=8, decode=plan), cfg, tmp_path).run()
    assert summary["decode"]["path"] == "cpu" and summary["decode"]["threads"] == 2
    assert summary["decode"]["reason"].startswith("auto")
    assert summary["model"]["device"] == "cpu" and summary["model"]["preprocess"] == "numpy"
