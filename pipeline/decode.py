"""Which FFmpeg decodes, and how: NVDEC (``-hwaccel cuda``) when the FFmpeg in use has it and
an NVIDIA device is present, otherwise the CPU decoder with its threads.

``source.decode`` (``auto``, ``cpu``, ``cuda``) and ``source.ffmpeg`` (the binary: a name on
PATH or a path) are resolved once per configuration into a :class:`DecodePlan`, which every
FFmpeg child of every stream then uses, and which the replay summary, the server's start-up
line and ``/readyz`` report. With ``-hwaccel cuda`` and a raw-video pipe, FFmpeg decodes on the
GPU and downloads each frame to system memory for the ``bgr24`` conversion, so the rest of the
pipeline is unchanged.

``ffprobe`` is looked up beside the ffmpeg binary, then on PATH; without one (the static
FFmpeg of the ``imageio-ffmpeg`` wheel ships none), sources are probed by ``ffmpeg -i`` itself
(:func:`parse_ffmpeg_banner`).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.detector import nvidia_device_present
from pipeline.types import VigilError

DECODE_MODES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DecodePlan:
    """ffmpeg/ffprobe binaries (ffprobe None: probe with ffmpeg), the hardware decoder
    (``"cuda"`` or ``""`` for the CPU), decoder threads (0: FFmpeg's choice), and why."""

    ffmpeg: str
    ffprobe: str | None
    hwaccel: str
    threads: int
    version: str
    reason: str

    @property
    def path(self) -> str:
        return "cuda" if self.hwaccel == "cuda" else "cpu"

    def input_flags(self) -> list[str]:
        """FFmpeg input options (before ``-i``) for this decode path."""
        if self.hwaccel:
            return ["-hwaccel", self.hwaccel]
        return ["-threads", str(self.threads)] if self.threads else []

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ffmpeg": self.ffmpeg,
            "ffmpeg_version": self.version,
            "probe": "ffprobe" if self.ffprobe else "ffmpeg",
            "threads": self.threads,
            "reason": self.reason,
        }


def parse_hwaccels(text: str) -> tuple[str, ...]:
    """The method names of ``ffmpeg -hide_banner -hwaccels`` output."""
    lines = [ln.strip() for ln in text.splitlines()]
    if "Hardware acceleration methods:" in lines:
        lines = lines[lines.index("Hardware acceleration methods:") + 1 :]
    return tuple(ln for ln in lines if re.fullmatch(r"[a-z0-9_]+", ln))


def parse_version(text: str) -> str:
    """``ffmpeg version 7.0.2-static ...`` -> ``7.0.2-static``."""
    m = re.search(r"ffmpeg version (\S+)", text)
    return m.group(1) if m else "unknown"


def choose_path(mode: str, hwaccels: tuple[str, ...], gpu_present: bool) -> tuple[str, str]:
    """(hwaccel, reason) for ``mode`` given what FFmpeg and the machine offer."""
    if mode not in DECODE_MODES:
        raise VigilError(f"decode must be one of {', '.join(DECODE_MODES)}, got {mode!r}")
    has_cuda = "cuda" in hwaccels
    if mode == "cpu":
        return "", "source.decode is cpu"
    if mode == "cuda":
        if not has_cuda:
            raise VigilError(
                "source.decode is cuda but this FFmpeg has no cuda hwaccel "
                f"(it lists: {', '.join(hwaccels) or 'none'})"
            )
        if not gpu_present:
            raise VigilError("source.decode is cuda but no NVIDIA GPU is present")
        return "cuda", "source.decode is cuda"
    if has_cuda and gpu_present:
        return "cuda", "auto: FFmpeg has the cuda hwaccel and an NVIDIA GPU is present"
    if not has_cuda:
        return "", "auto: this FFmpeg lists no cuda hwaccel"
    return "", "auto: FFmpeg has the cuda hwaccel but no NVIDIA GPU is present"


def _run(args: list[str]) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VigilError(f"cannot run {args[0]}: {e}") from None
    return proc.stdout + proc.stderr


def find_ffmpeg(binary: str) -> tuple[str, str | None]:
    """(ffmpeg path, ffprobe path or None) for ``source.ffmpeg``."""
    ffmpeg = shutil.which(binary)
    if ffmpeg is None:
        raise VigilError(
            f"{binary} not found (install FFmpeg: apt-get install ffmpeg, or set source.ffmpeg)"
        )
    beside = Path(ffmpeg).with_name("ffprobe")
    ffprobe = str(beside) if beside.is_file() else shutil.which("ffprobe")
    return ffmpeg, ffprobe


@functools.lru_cache(maxsize=8)
def ffmpeg_capabilities(ffmpeg: str) -> tuple[tuple[str, ...], str]:
    """(hwaccel methods, version) of the binary at ``ffmpeg`` (asked once per process)."""
    hwaccels = parse_hwaccels(_run([ffmpeg, "-hide_banner", "-hwaccels"]))
    return hwaccels, parse_version(_run([ffmpeg, "-version"]))


def resolve_decode(binary: str = "ffmpeg", mode: str = "auto", threads: int = 0) -> DecodePlan:
    """The decode plan for ``source.ffmpeg``, ``source.decode`` and ``source.decode_threads``."""
    ffmpeg, ffprobe = find_ffmpeg(binary)
    hwaccels, version = ffmpeg_capabilities(ffmpeg)
    hwaccel, reason = choose_path(mode, hwaccels, nvidia_device_present())
    return DecodePlan(ffmpeg, ffprobe, hwaccel, threads, version, reason)


def parse_ffmpeg_banner(text: str) -> dict[str, Any]:
    """Width, height and frame rate of the first video stream from ``ffmpeg -i`` output, in
    ffprobe's stream keys (``width``, ``height``, ``avg_frame_rate``); empty when none."""
    for line in text.splitlines():
        if "Stream #" not in line or "Video:" not in line:
            continue
        size = re.search(r"[ ,](\d{2,5})x(\d{2,5})[ ,\[]", line + " ")
        if size is None:
            continue
        fps = re.search(r"([\d.]+) fps", line) or re.search(r"([\d.]+) tbr", line)
        rate = f"{fps.group(1)}/1" if fps else "0/0"
        return {"width": int(size.group(1)), "height": int(size.group(2)), "avg_frame_rate": rate}
    return {}
