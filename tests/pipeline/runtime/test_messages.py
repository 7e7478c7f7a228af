import json
import re

import numpy as np
import pytest
import zmq

from pipeline.runtime.messages import FrameMessage, MessageError


def _frame(**kw):
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    return FrameMessage("cam0", 7, 0.25, 1000.0, {"image": image}, **kw)


def test_round_trip_keeps_every_field():
    dets = np.array([[1, 2, 3, 4, 0.9, 0]], np.float32)
    msg = _frame(detections=dets, track_ids=np.array([5]), meta={"ratio": 0.5}, trace={"capture": 1.0})
    back = FrameMessage.decode(msg.encode())
    assert (back.stream_id, back.frame_index, back.source_ts, back.capture_wall) == ("cam0", 7, 0.25, 1000.0)
    np.testing.assert_array_equal(back.image, msg.image)
    np.testing.assert_array_equal(back.detections, dets)
    assert back.track_ids.tolist() == [5] and back.meta == {"ratio": 0.5} and back.trace == {"capture": 1.0}


def test_end_of_stream_round_trip():
    back = FrameMessage.decode(FrameMessage.end_of_stream("cam3").encode())
    assert back.is_eos and back.stream_id == "cam3" and back.buffers == {}


def test_pixels_cross_a_real_socket_without_copy():
    ctx = zmq.Context.instance()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    pull.bind("inproc://zero-copy")
    push.connect("inproc://zero-copy")
    image = np.random.default_rng(0).integers(0, 255, (512, 640, 3), dtype=np.uint8)
    push.send_multipart(FrameMessage("c", 0, 0.0, 0.0, {"image": image}).encode(), copy=False)
    parts = pull.recv_multipart(copy=False)
    back = FrameMessage.decode(parts)
    np.testing.assert_array_equal(back.image, image)
    assert not back.image.flags.owndata  # a view on the received ZeroMQ frame, not a copy
    push.close(0), pull.close(0)


@pytest.mark.parametrize("parts, why", [
    ([], "empty"),
    ([b"\xff\xfe"], "not JSON"),
    ([b"[1, 2]"], "not a v1"),
    ([json.dumps({"v": 1, "kind": "boom"}).encode()], "unknown message kind"),
    ([json.dumps({"v": 1, "kind": "frame", "stream_id": "a", "frame_index": 0, "source_ts": 0, "capture_wall": 0,
                  "buffers": [{"name": "image", "shape": [2, 2, 3], "dtype": "uint8"}]}).encode()], "names 1 buffers"),
    ([json.dumps({"v": 1, "kind": "frame", "stream_id": "a", "frame_index": 0, "source_ts": 0, "capture_wall": 0,
                  "buffers": [{"name": "image", "shape": [2, 2, 3], "dtype": "uint8"}]}).encode(), b"123"], "holds 3 bytes"),
    ([json.dumps({"v": 1, "kind": "frame", "stream_id": "a", "frame_index": 0, "source_ts": 0, "capture_wall": 0,
                  "buffers": [{"name": "x", "shape": [1], "dtype": "object"}]}).encode(), b"1"], "unsupported dtype"),
    ([json.dumps({"v": 1, "kind": "frame", "buffers": []}).encode()], "stream id 'None'"),
])
def test_malformed_messages_raise_message_error(parts, why):
    with pytest.raises(MessageError, match=why):
        FrameMessage.decode(parts)


def _header(**fields):
    base = {"v": 1, "kind": "frame", "stream_id": "a", "frame_index": 0, "source_ts": 0.0, "capture_wall": 0.0,
            "buffers": [{"name": "image", "shape": [2, 2, 3], "dtype": "uint8"}]}
    return json.dumps({**base, **fields}).encode()


IMAGE = bytes(12)


@pytest.mark.parametrize("parts, why", [
    ([b"[" * 100_000 + b"]" * 100_000], "nested too deeply"),
    ([_header(meta={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}), IMAGE], "nested deeper than 8"),
    ([_header(buffers=5)], "'buffers' must be a list"),
    ([_header(buffers=[5]), b""], "a buffer spec must be"),
    ([_header(frame_index=True), IMAGE], "'frame_index' must be a whole number"),
    ([_header(frame_index=-1), IMAGE], "'frame_index' must be a whole number"),
    ([_header().replace(b'"frame_index": 0', b'"frame_index": Infinity'), IMAGE], "not JSON"),
    ([_header().replace(b'"source_ts": 0.0', b'"source_ts": NaN'), IMAGE], "not JSON"),
    ([_header(source_ts="soon"), IMAGE], "'source_ts' must be a number"),
    ([_header(stream_id="../../x"), IMAGE], "stream id '../../x' is not"),
    ([_header(stream_id="/tmp/x"), IMAGE], "stream id '/tmp/x' is not"),
    ([_header(stream_id=".."), IMAGE], "stream id '..' is not"),
    ([_header(stream_id="a" * 65), IMAGE], "is not [A-Za-z0-9_.-], 1 to 64"),
    ([_header(meta=[1]), IMAGE], "'meta' must be a dict"),
    ([_header(trace={"x": "y"}), IMAGE], "trace must map"),
    ([_header(detections=[[1, 2, 3]]), IMAGE], "detections must be a list of"),
    ([_header(detections=[[1, 2, 3, 4, "x", 0]]), IMAGE], "not a number"),
    ([_header(detections=[[1, 2, 3, 4, 1e39, 0]]), IMAGE], "not finite"),
    ([_header(detections=[], track_ids=[1]), IMAGE], "pair with the detections"),
    ([_header(track_ids=[1.5], detections=[[1, 2, 3, 4, 0.5, 0]]), IMAGE], "track_ids must be a list of whole"),
    ([_header(buffers=[{"name": "image", "shape": [2, 2], "dtype": "uint8"}]), bytes(4)], "H x W x 3 'image'"),
    ([_header(buffers=[{"name": "image", "shape": [1, 1, 3], "dtype": "float32"}]), bytes(12)], "H x W x 3 'image'"),
    ([_header(buffers=[{"name": "image", "shape": [2, 2, 3, 1, 1], "dtype": "uint8"}]), IMAGE], "up to 4 whole"),
    ([_header(buffers=[{"name": "image", "shape": [-1, 2, 3], "dtype": "uint8"}]), IMAGE], "up to 4 whole"),
    ([_header()] + [IMAGE] * 9, "at most 8 buffers"),
    ([_header().replace(b'"source_ts": 0.0', b'"source_ts": 1' + b"0" * 400), IMAGE], "'source_ts' must be a number"),
    ([_header().replace(b'"capture_wall": 0.0', b'"capture_wall": 1e400'), IMAGE], "'capture_wall' must be a number"),
    ([_header(capture_wall=-1e308), IMAGE], "'capture_wall' must be a number"),
    ([_header(trace={"x": 1e300}), IMAGE], "trace must map"),
])
def test_hostile_headers_are_message_errors_never_crashes(parts, why):
    with pytest.raises(MessageError, match=re.escape(why)):
        FrameMessage.decode(parts)


def test_an_end_of_stream_needs_no_image():
    assert FrameMessage.decode([_header(kind="eos", buffers=[])]).is_eos
