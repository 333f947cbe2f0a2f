"""Frame sources: FFmpeg decodes every stream in its own subprocess.

One ``ffmpeg`` child per stream writes raw ``bgr24`` frames to a pipe; a reader (the caller's
thread) turns each ``H*W*3`` chunk into a :class:`Frame` without copying. A second thread drains
FFmpeg's log and counts the decode errors it reports (corrupt packets are decoded past, not
fatal). Measured on the 2-core dev machine (README): 720 frames/s for the 768x432 sample clip and
360 frames/s for TUD-Stadtmitte's 640x480 JPEGs, in a process of its own that overlaps inference.

Source specs: a video file, a folder of frames (sorted by file name: MOTChallenge ``img1/``), an
``rtsp://`` / ``rtsps://`` URL (TCP transport unless told otherwise), or ``http(s)://`` when the
caller allows it. FFmpeg always gets an explicit ``-protocol_whitelist`` for the kind of source,
so a crafted file or playlist cannot make it open anything else.

A network URL that carries credentials (userinfo, ``?token=``...) never goes on FFmpeg's command
line, where every local user can read it (``ps``, ``/proc/PID/cmdline``): FFmpeg reads a
one-entry ``ffconcat`` script from its standard input instead (``-f concat -i pipe:0``), with
the source's options as ``option`` lines, so the URL only exists in Vigil's memory and in a pipe
only Vigil and FFmpeg hold. Whatever FFmpeg then prints is scrubbed of those secrets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.credentials import has_secrets, redact, scrub, url_secrets
from pipeline.decode import DecodePlan, parse_ffmpeg_banner, resolve_decode
from pipeline.types import Frame, VigilError

__all__ = ["FFmpegSource", "SourceInfo", "list_frames", "redact"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_ERROR_WORDS = re.compile(r"error|corrupt|invalid|concealing|missing", re.IGNORECASE)
# Timestamp notices (a camera's clock jumping) are not decode errors and never the cause of an
# exit; they used to mask the real reason (e.g. "Connection refused") in last_error.
_TIMESTAMP_NOTICE = re.compile(r"\b(dts|pts|timestamps?)\b", re.IGNORECASE)
# What FFmpeg's mov/mp4 demuxer says where a file was cut short.
_TRUNCATED = re.compile(r"partial file|moov atom not found", re.IGNORECASE)
PROTOCOLS = {
    "file": "file,pipe",
    "rtsp": "rtsp,rtsps,rtp,srtp,udp,tcp,tls",
    "http": "http,https,tcp,tls",
}
PIPE_BYTES = 1 << 20  # pipe buffer asked for: one read per frame instead of ~16 (fewer GIL hops)


def _cause(line: str, secrets: list[str]) -> str:
    """One FFmpeg log line as a user-facing reason: no secrets, no ``pipe:0:`` prefix."""
    return scrub(line.removeprefix("pipe:0: "), secrets)[:300]


def _concat_script(url: str, options: dict[str, str]) -> bytes:
    """A one-entry ffconcat script opening ``url`` with per-input ``options``. A line break in
    ``url`` could add directives of its own: refused."""
    if re.search(r"[\x00-\x1f\x7f]", url):
        raise VigilError(f"url contains control characters: {redact(url)!r}")
    quoted = url.replace("'", "'\\''")
    lines = ["ffconcat version 1.0", f"file '{quoted}'"]
    lines += [f"option {k} {v}" for k, v in options.items()]
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the probe learnt. fps is 0 when unknown; frame_count is None when unknown/live."""

    kind: str  # "video", "folder" or "rtsp"
    uri: str
    width: int
    height: int
    fps: float
    frame_count: int | None
    codec: str = ""  # the video codec's name when the probe said it ("h264", "mjpeg"...)


def _probe(
    plan: DecodePlan,
    args: list[str],
    what: str,
    timeout: float,
    stdin: bytes | None = None,
    secrets: list[str] | None = None,
) -> dict[str, Any]:
    """The first video stream's facts (ffprobe's keys), by ffprobe or, without one, by
    ``ffmpeg -i``. ``args`` end with the input (after ``-i`` or alone)."""
    if plan.ffprobe is None:
        head = args[:-2] if len(args) > 1 and args[-2] == "-i" else args[:-1]
        cmd = [plan.ffmpeg, "-hide_banner", "-nostdin", *head, "-i", args[-1]]
    else:
        cmd = [plan.ffprobe, "-v", "error", "-select_streams", "v:0", "-show_streams"]
        cmd += ["-of", "json", *args]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            input=stdin or b"",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise VigilError(f"{what}: no answer within {timeout:.0f} s") from None
    streams: list[dict[str, Any]] = []
    stderr = proc.stderr.decode(errors="replace")
    if plan.ffprobe is None:
        found = parse_ffmpeg_banner(stderr)
        streams = [found] if found else []
    elif proc.returncode == 0:
        with contextlib.suppress(ValueError):
            streams = json.loads(proc.stdout.decode(errors="replace") or "{}").get("streams", [])
    if not streams:
        lines = [ln for ln in stderr.strip().splitlines() if "output file" not in ln]
        lines = lines or ["no video stream"]
        raise VigilError(f"{what} is not a readable video ({_cause(lines[-1], secrets or [])})")
    return dict(streams[0])


def _fps(stream: dict[str, Any]) -> float:
    for key in ("avg_frame_rate", "r_frame_rate"):
        num, _, den = str(stream.get(key, "0/0")).partition("/")
        try:
            value = float(num) / float(den or 1)
        except (ValueError, ZeroDivisionError):
            continue
        if math.isfinite(value) and 0 < value < 1000:
            return value
    return 0.0


def _file_flags(realtime: bool, loop: bool) -> list[str]:
    """FFmpeg input options for a local file or frame list: whitelist, pacing, looping."""
    flags = ["-protocol_whitelist", PROTOCOLS["file"]]
    if realtime:
        flags.append("-re")
    if loop:
        flags += ["-stream_loop", "-1"]
    return flags


def list_frames(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VigilError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    return files


class FFmpegSource:
    """A decodable source. ``frames()`` starts the FFmpeg child and yields frames in order.

    stream_id: name used in every Frame; max_frames: stop after this many (0 = no limit);
    folder_fps: nominal rate of a frame folder (pts = index / fps);
    rtsp_transport: ``tcp`` or ``udp``; timeout_s: network I/O timeout for RTSP;
    realtime: pace a file at its frame rate (a file played as a live camera);
    loop: restart a file at its end, forever; allow_http: accept http(s):// URLs;
    decode: which FFmpeg and decode path (default: :func:`pipeline.decode.resolve_decode`'s
    ``auto`` with the ``ffmpeg`` on PATH).
    """

    def __init__(
        self,
        spec: str,
        stream_id: str = "0",
        max_frames: int = 0,
        folder_fps: float = 25.0,
        rtsp_transport: str = "tcp",
        timeout_s: float = 10.0,
        realtime: bool = False,
        loop: bool = False,
        allow_http: bool = False,
        decode: DecodePlan | None = None,
    ) -> None:
        self.decode = decode or resolve_decode()
        self.stream_id = stream_id
        self.max_frames = max_frames
        self.decode_errors = 0
        self.last_error = ""  # the latest decode error FFmpeg reported (scrubbed)
        self.last_line = ""  # FFmpeg's latest log line (scrubbed)
        self.frames_decoded = 0
        self._timeout = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._close_lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._stdin: bytes | None = None
        self._secrets = url_secrets(spec)
        self.truncated = ""  # FFmpeg's words when a file turned out cut short
        self.exit_reason = ""  # FFmpeg's last line when it exited with an error
        lowered = spec.lower()
        if lowered.startswith(("http://", "https://", "rtsp://", "rtsps://")):
            http = lowered.startswith("http")
            if http and not allow_http:
                raise VigilError(f"http(s) sources are disabled: {redact(spec)}")
            if not http and rtsp_transport not in ("tcp", "udp"):
                raise VigilError(f"rtsp transport must be tcp or udp, got {rtsp_transport!r}")
            micros = str(int(timeout_s * 1e6))
            # RTSP: probe 1 s of stream, not FFmpeg's default 5 s: a camera is live sooner, and
            # many cameras connecting at once cost less.
            opts = (
                {"rw_timeout": micros}
                if http
                else {"rtsp_transport": rtsp_transport, "timeout": micros,
                      "analyzeduration": "1000000", "probesize": "1000000"}
            )  # fmt: skip
            self._open_network(spec, "http" if http else "rtsp", opts, timeout_s)
            return
        path = Path(spec)
        if path.is_dir():
            files = list_frames(path)
            s = _probe(self.decode, [str(files[0])], str(files[0]), timeout_s)
            self._tmp = tempfile.TemporaryDirectory(prefix="vigil-frames-")
            listing = Path(self._tmp.name) / "frames.txt"
            quoted = (str(f.resolve()).replace("'", "'\\''") for f in files)
            listing.write_text("".join(f"file '{q}'\n" for q in quoted))
            self._input = [
                *_file_flags(realtime, loop), "-f", "concat", "-safe", "0", "-i", str(listing),
            ]  # fmt: skip
            self.info = SourceInfo(
                "folder",
                str(path),
                int(s["width"]),
                int(s["height"]),
                folder_fps,
                None if loop else len(files),
                str(s.get("codec_name") or ""),
            )
            return
        if not path.exists():
            raise VigilError(f"source not found: {spec}")
        if not path.is_file():
            raise VigilError(f"source is neither a file, a folder nor an rtsp:// URL: {spec}")
        s = _probe(self.decode, [str(path)], str(path), timeout_s)
        count = "" if loop else str(s.get("nb_frames") or "")
        self._input = [*_file_flags(realtime, loop), "-i", str(path)]
        self.info = SourceInfo(
            "video",
            str(path),
            int(s["width"]),
            int(s["height"]),
            _fps(s),
            int(count) if count.isdigit() else None,
            str(s.get("codec_name") or ""),
        )

    def _open_network(self, spec: str, kind: str, opts: dict[str, str], timeout_s: float) -> None:
        """Probe a network source and prepare FFmpeg's input arguments; a URL with secrets goes
        through standard input as an ffconcat script, never on a command line."""
        whitelist = PROTOCOLS[kind]
        outer = {k: v for k, v in opts.items() if k in ("analyzeduration", "probesize")}
        if has_secrets(spec):
            self._stdin = _concat_script(
                spec, {**opts, "fflags": "nobuffer"} if kind == "rtsp" else opts
            )
            net = ["-protocol_whitelist", f"pipe,{whitelist}"]
            net += [a for k, v in outer.items() for a in (f"-{k}", v)]
            net += ["-f", "concat", "-safe", "0"]
            s = _probe(
                self.decode,
                [*net, "-i", "pipe:0"],
                redact(spec),
                timeout_s + 5,
                self._stdin,
                self._secrets,
            )
            self._input = [*net, "-i", "pipe:0"]
        else:
            net = ["-protocol_whitelist", whitelist]
            net += [a for k, v in opts.items() for a in (f"-{k}", v)]
            s = _probe(self.decode, [*net, spec], redact(spec), timeout_s + 5)
            self._input = [*net, *(["-fflags", "nobuffer"] if kind == "rtsp" else []), "-i", spec]
        self.info = SourceInfo(
            kind, redact(spec), int(s["width"]), int(s["height"]), _fps(s), None,
            str(s.get("codec_name") or ""),
        )  # fmt: skip

    def _drain_log(self, stream: object) -> None:
        """FFmpeg's log: count decode errors, remember the last line (the cause if it exits
        with an error) and whether a file was cut short. Every line is scrubbed first."""
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            self.last_line = _cause(line, self._secrets)
            if _TRUNCATED.search(line):
                self.truncated = self.last_line
            if _ERROR_WORDS.search(line) and not _TIMESTAMP_NOTICE.search(line):
                self.decode_errors += 1
                self.last_error = self.last_line

    def frames(self) -> Iterator[Frame]:
        """Decode and yield frames; raises VigilError if FFmpeg fails before any frame."""
        w, h = self.info.width, self.info.height
        size = w * h * 3
        limit = ["-frames:v", str(self.max_frames)] if self.max_frames > 0 else []
        cmd = [
            self.decode.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
            *self.decode.input_flags(), *self._input, "-an", "-sn", "-dn", *limit,
            "-f", "rawvideo", "-pix_fmt", "bgr24", "-fps_mode", "passthrough", "pipe:1",
        ]  # fmt: skip
        self._proc = proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if self._stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        if proc.stdin is not None:  # the ffconcat script with the URL: then end of input
            with contextlib.suppress(OSError):
                proc.stdin.write(self._stdin or b"")
            proc.stdin.close()
        assert proc.stdout is not None
        with contextlib.suppress(OSError, AttributeError):  # Linux only; a hint, not required
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        log = threading.Thread(target=self._drain_log, args=(proc.stderr,), daemon=True)
        log.start()
        fps = self.info.fps or 25.0
        try:
            index = 0
            while True:
                buf = _read_exact(proc.stdout, size)
                if buf is None:
                    break
                image = np.frombuffer(buf, np.uint8).reshape(h, w, 3)
                yield Frame(self.stream_id, index, index / fps, image, time.time())
                index += 1
                self.frames_decoded = index
        finally:
            self.close()
            log.join(timeout=2)
        if proc.returncode not in (0, None):
            self.exit_reason = self.last_line or f"FFmpeg exited with status {proc.returncode}"
        if self.frames_decoded == 0 and proc.returncode not in (0, None):
            raise VigilError(f"{self.info.uri}: FFmpeg decoded no frame ({self.exit_reason})")

    def cpu_seconds(self) -> tuple[int, float]:
        """(pid, user + system CPU seconds) of the running FFmpeg child, from ``/proc``; (0, 0.0)
        when none runs or the platform has no ``/proc``."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return 0, 0.0
        try:
            with open(f"/proc/{proc.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return 0, 0.0
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        return proc.pid, (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    def close(self) -> None:
        """End the FFmpeg child (safe from any thread, any number of times)."""
        with self._close_lock:
            self._close()

    def _close(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _read_exact(stream: object, size: int) -> bytearray | None:
    """Read exactly ``size`` bytes into one buffer; None at end of stream (a partial tail too)."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            return None
        got += n
    return buf
