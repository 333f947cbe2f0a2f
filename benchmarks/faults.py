"""Faults with real parts, for the tests and `make soak`: a TCP relay that delays, stalls and
drops, and clips that are broken on purpose.

:class:`TcpRelay` sits between a client (Vigil's FFmpeg) and a server (the loopback RTSP server)
on 127.0.0.1 and forwards bytes both ways, in its own thread and event loop. While it runs:

- ``delay_s``: every chunk waits this long before it is forwarded (latency, jitter-free);
- ``stall()`` / ``resume()``: stop forwarding (connections stay open, bytes pile up in the
  kernel: a camera whose network froze), then carry on;
- ``drop()``: reset every open connection (a camera whose network went down for a moment);
- ``refuse``: new connections are closed at once (a camera that is unreachable).

Linux ``tc netem`` inside a network namespace would be the other way; the kernels these tests
run on (Firecracker VMs) have no ``sch_netem``, so the relay does it in user space, on TCP
(RTSP over TCP, Vigil's default transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import subprocess
import threading
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"


def gst_available() -> bool:
    """True if Debian's GStreamer RTSP server and its Python bindings are installed."""
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"]
    return subprocess.run(probe, capture_output=True).returncode == 0


class RtspServer:
    """benchmarks/rtsp_server.py on a fixed loopback port, so it can be killed and started again
    under the same URL: ``cam`` serves ``clip``, ``more`` adds mounts (name=clip)."""

    def __init__(self, port: int, clip: Path, auth: str = "", **more: Path) -> None:
        self.port, self.clip, self.auth, self.more = port, clip, auth, more
        self.rtp_base = random.randrange(20000, 40000, 2)
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(RTSP_SCRIPT), "--port", str(self.port), "--auth", self.auth,
             "--rtp-base", str(self.rtp_base), f"cam={self.clip}",
             *(f"{name}={path}" for name, path in self.more.items())],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        url = self.proc.stdout.readline().strip()
        assert url.startswith("rtsp://"), url
        for _ in self.more:
            self.proc.stdout.readline()
        return url

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class TcpRelay:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.delay_s = 0.0
        self.refuse = False
        self.connections = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)
        self.port = 0

    # -- control (any thread) ------------------------------------------------------------
    def start(self) -> TcpRelay:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._flowing.set()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def drop(self) -> None:
        """Reset every open connection (RST, as a dead link looks to TCP)."""

        def reset() -> None:
            for w in list(self._writers):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                w.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(reset)

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while True:
            data = await src.read(65536)
            if not data:
                dst.close()
                return
            while not self._flowing.is_set():  # stalled: hold the bytes, keep the connection
                await asyncio.sleep(0.05)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            dst.write(data)
            await dst.drain()


def resolution_changing_clip(folder: Path, sizes: tuple[str, ...] = ("320x240", "640x360")) -> Path:
    """An H.264 MPEG-TS whose picture size changes every 2 s (in-band SPS), looping cleanly:
    what a camera sends when someone changes its resolution setting."""
    parts = []
    for i, size in enumerate(sizes):
        part = folder / f"part{i}.ts"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
             "-i", f"testsrc2=size={size}:rate=10", "-t", "2", "-c:v", "libx264",
             "-preset", "ultrafast", "-g", "10", "-bf", "0", "-output_ts_offset", str(2 * i),
             "-f", "mpegts", str(part)],
            check=True,
        )  # fmt: skip
        parts.append(part)
    out = folder / "changing.ts"
    out.write_bytes(b"".join(p.read_bytes() for p in parts))
    return out
