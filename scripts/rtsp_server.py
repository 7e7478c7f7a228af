#!/usr/bin/python3
"""A real RTSP camera for tests and field rehearsals: GStreamer's gst-rtsp-server.

Run with the system Python, whose `gi` has the GStreamer bindings (Debian: python3-gi,
gir1.2-gst-rtsp-server-1.0):

    /usr/bin/python3 scripts/rtsp_server.py --port 8554 --path /cam [--video clip.mp4] [--fps 30]

Without --video it serves a moving test pattern. With --video the file is decoded once, at start, into
raw frames at the served size, and an appsrc plays them round and round with timestamps that keep
rising across passes, re-encoded live (x264, zero latency): a camera that streams for hours without a
break, where a client that connects later sees "now", not the start of the file. (Looping the file
itself, multifilesrc, ends the RTP stream at every pass: a capture saw "stream down" every pass.)
Prints "READY rtsp://127.0.0.1:PORT/PATH" once listening; SIGINT/SIGTERM stop it cleanly.
"""
import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

MAX_FRAMES = 3000  # frames of a --video kept in memory (100 s at 30 fps)


def raw_caps(width: int, height: int, fps: int) -> str:
    return f"video/x-raw,format=I420,width={width},height={height},framerate={fps}/1"


def encoder(fps: int) -> str:
    return (f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! "
            "rtph264pay name=pay0 pt=96 config-interval=1")


def decode_frames(video: str, caps: str) -> list[bytes]:
    """The file's frames, converted to the served size and rate, as raw I420 buffers."""
    location = video.replace("\\", "\\\\").replace('"', '\\"')
    pipeline = Gst.parse_launch(f'filesrc location="{location}" ! decodebin ! videoconvert ! videoscale ! '
                                f"videorate ! {caps} ! appsink name=sink sync=false")
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames = []
    while len(frames) < MAX_FRAMES:
        sample = sink.emit("pull-sample")
        if sample is None:  # end of the file (or an error: then no frames)
            break
        buffer = sample.get_buffer()
        frames.append(buffer.extract_dup(0, buffer.get_size()))
    pipeline.set_state(Gst.State.NULL)
    return frames


class LoopingSource:
    """Feeds an appsrc the frames in a loop; PTS rise by one frame period per frame, across passes."""

    def __init__(self, frames: list[bytes], fps: int):
        self.frames, self.duration, self.count = frames, Gst.SECOND // fps, 0

    def attach(self, factory, media) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.connect("need-data", self.need_data)

    def need_data(self, appsrc, _length) -> None:
        buffer = Gst.Buffer.new_wrapped(self.frames[self.count % len(self.frames)])
        buffer.pts, buffer.duration = self.count * self.duration, self.duration
        self.count += 1
        appsrc.emit("push-buffer", buffer)


def make_factory(args, width: int, height: int) -> GstRtspServer.RTSPMediaFactory:
    caps = raw_caps(width, height, args.fps)
    factory = GstRtspServer.RTSPMediaFactory()
    tail = encoder(args.fps)
    if not args.video:
        factory.set_launch(f"( videotestsrc is-live=true pattern=ball ! {caps} ! {tail} )")
        return factory
    frames = decode_frames(args.video, caps)
    if not frames:
        raise SystemExit(f"error: no frame could be decoded from {args.video}")
    factory.set_launch(f'( appsrc name=src is-live=true format=time caps="{caps}" ! {tail} )')
    looping = LoopingSource(frames, args.fps)
    factory.connect("media-configure", looping.attach)
    factory.looping = looping  # kept alive with the factory
    return factory


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
    factory = make_factory(args, width, height)
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
