#!/usr/bin/python3
"""A real RTSP camera for tests and field rehearsals: GStreamer's gst-rtsp-server.

Run with the system Python, whose `gi` has the GStreamer bindings (Debian: python3-gi,
gir1.2-gst-rtsp-server-1.0):

    /usr/bin/python3 scripts/rtsp_server.py --port 8554 --path /cam [--video clip.mp4] [--fps 30]

Without --video it serves a moving test pattern. The video is decoded and re-encoded live
(x264, zero latency) and looped, so it behaves as a camera: a client that connects later sees
"now", not the start of the file. Prints "READY rtsp://127.0.0.1:PORT/PATH" once listening.
"""
import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def launch_line(video: str | None, width: int, height: int, fps: int) -> str:
    if video:
        # multifilesrc loops the file; decodebin handles any container/codec
        source = (f'multifilesrc location="{video}" loop=true ! decodebin ! videoconvert ! videoscale ! '
                  f"videorate ! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1")
    else:
        source = (f"videotestsrc is-live=true pattern=ball ! "
                  f"video/x-raw,format=I420,width={width},height={height},framerate={fps}/1")
    return (f"( {source} ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! "
            f"rtph264pay name=pay0 pt=96 config-interval=1 )")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--path", default="/cam")
    parser.add_argument("--video", help="file to loop (default: a test pattern)")
    parser.add_argument("--size", default="320x256", help="WIDTHxHEIGHT served")
    parser.add_argument("--fps", type=int, default=30)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.video, width, height, args.fps))
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"error: cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://{args.host}:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
