#!/usr/bin/python3
"""A loopback RTSP test server (GStreamer), for tests only. Run with Debian's /usr/bin/python3,
which has the GObject bindings:  rtsp_server.py --port 8554 cam1=clip.mp4 [cam2=other.mp4]

Each mount is fed by a looping ``ffmpeg -re`` pushing RTP to a local UDP port; clips are first
remuxed to MPEG-TS so SPS/PPS travel in-band and the loop wraps cleanly (ENVIRONMENT.md §8).
Prints one ``rtsp://...`` line per mount when ready; SIGTERM stops it and its feeders.
``--auth USER:PASSWORD`` makes every mount require RTSP basic authentication (a client without
those credentials gets 401).
"""

import argparse
import os
import signal
import subprocess
import tempfile

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--port", default="8554")
ap.add_argument("--address", default="127.0.0.1")  # 0.0.0.0 in a container (compose)
ap.add_argument("--rtp-base", type=int, default=15000)
ap.add_argument("--auth", default="", help="USER:PASSWORD required of every client")
ap.add_argument("mounts", nargs="+")
a = ap.parse_args()
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address(a.address)
server.set_service(a.port)
mounts = server.get_mount_points()
feeders = []
permissions = None
if a.auth:
    user, _, password = a.auth.partition(":")
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "viewer")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role("viewer", "media.factory.access", True)
    permissions.add_permission_for_role("viewer", "media.factory.construct", True)


def feeder_cmd(path: str, port: int) -> list[str]:
    rtp = f"rtp://127.0.0.1:{port}?pkt_size=1200"
    return ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", path,
            "-an", "-c:v", "copy", "-f", "rtp", "-payload_type", "96", rtp]  # fmt: skip


tmp = tempfile.mkdtemp(prefix="vigil-rtsp-")
for i, spec in enumerate(a.mounts):
    name, path = spec.split("=", 1)
    port = a.rtp_base + 2 * i
    if not path.endswith(".ts"):
        ts = os.path.join(tmp, f"{name}.ts")
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", path, "-an", "-c:v", "copy",
             "-bsf:v", "h264_mp4toannexb", "-f", "mpegts", ts],
            check=True,
        )  # fmt: skip
        path = ts
    f = GstRtspServer.RTSPMediaFactory()
    f.set_launch(
        f'( udpsrc port={port} caps="application/x-rtp,media=video,encoding-name=H264,'
        f'payload=96,clock-rate=90000" ! rtph264depay ! h264parse config-interval=-1 '
        f"! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    f.set_shared(True)
    if permissions is not None:
        f.set_permissions(permissions)
    mounts.add_factory(f"/{name}", f)
    feeders.append(subprocess.Popen(feeder_cmd(path, port), stdout=subprocess.DEVNULL))
    print(f"rtsp://127.0.0.1:{a.port}/{name}", flush=True)
server.attach(None)
loop = GLib.MainLoop()


def stop(*_: object) -> bool:
    loop.quit()
    return GLib.SOURCE_REMOVE


GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, stop)
GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, stop)
try:
    loop.run()
finally:
    for p in feeders:
        p.terminate()
    for p in feeders:
        p.wait(timeout=5)
