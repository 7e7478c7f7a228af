"""The one message type that flows between stages: a frame and its metadata.

Wire format (ZeroMQ multipart, no pickle):
  part 0    UTF-8 JSON header
  part 1..n one raw buffer per entry of header["buffers"] (name, shape, dtype), sent zero-copy, except
            entries that name a slot of shared memory instead ("shared": pipeline.runtime.frame_store)

A header with ``kind == "eos"`` carries no buffers and marks the end of one stream; its ``frame_index``
is the stream's frame count as its source counted it (the index after its last frame; 0: unknown).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.runtime.frame_store import (FrameStore, FrameStoreReader, RingError, StaleBuffer, buffer_bytes,
                                          canonical_reference)

WIRE_VERSION = 1
FRAME, EOS = "frame", "eos"
_ALLOWED_DTYPES = {"uint8", "float32", "float16", "int32", "int64"}
_MAX_HEADER_BYTES = 1 << 20
_MAX_DEPTH = 8  # levels of nesting a header may have (meta holds small facts, not trees)
MAX_BUFFERS = 8  # buffers a message may carry (image, input, annotated, ...)
MAX_BUFFER_EXTENT = 1 << 40  # bytes a buffer's shape may span, its zero dimensions counted as 1
MAX_SECONDS = 1e11  # about 3,000 years: past any wall clock or source time
FLOAT32_MAX = float(np.finfo(np.float32).max)
STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class MessageError(ValueError):
    """A received message does not follow the wire format; the stage drops and counts it."""


class StaleFrame(MessageError):
    """A well-formed frame whose shared-memory slot was overwritten before it was read: the stage
    drops it as stale (live mode), not as malformed."""

    def __init__(self, stream_id: str, why: str):
        super().__init__(why)
        self.stream_id = stream_id


@dataclass
class FrameMessage:
    """A frame of one stream plus everything stages learned about it so far.

    ``detections`` is None until the detector ran, then an N x 6 float32 array
    [x1, y1, x2, y2, score, class_id] in source-image pixels; ``track_ids`` (N int64, -1 when
    unmatched) is added by the tracker. ``meta`` holds small JSON-able per-stage facts (e.g. the
    letterbox ratio), ``trace`` the wall time each stage sent the frame.
    """

    stream_id: str
    frame_index: int
    source_ts: float
    capture_wall: float
    buffers: dict[str, np.ndarray] = field(default_factory=dict)
    detections: np.ndarray | None = None
    track_ids: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, float] = field(default_factory=dict)
    kind: str = FRAME
    # buffers still in shared memory (decoded with defer): name -> (reference, shape, dtype); read_shared
    # reads them into ``buffers``
    pending: dict[str, tuple[dict, list, str]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def end_of_stream(cls, stream_id: str, frame_count: int = 0) -> "FrameMessage":
        return cls(stream_id, frame_count, 0.0, time.time(), kind=EOS)

    @property
    def is_eos(self) -> bool:
        return self.kind == EOS

    @property
    def image(self) -> np.ndarray:
        return self.buffers["image"]

    def age_ms(self, now: float | None = None) -> float:
        return ((now or time.time()) - self.capture_wall) * 1000.0

    def encode(self, store: FrameStore | None = None) -> list:
        """Multipart parts: JSON header, then the buffers themselves (no copy); with a ``store``, large
        buffers go into shared memory and the header names their slots."""
        specs, arrays = [], []
        for name, array in self.buffers.items():
            spec = {"name": name, "shape": list(array.shape), "dtype": str(array.dtype)}
            ref = None if store is None else store.share(self.stream_id, name, array)
            if ref is None:
                arrays.append(np.ascontiguousarray(array))
            else:
                spec["shared"] = ref
            specs.append(spec)
        header = {
            "v": WIRE_VERSION,
            "kind": self.kind,
            "stream_id": self.stream_id,
            "frame_index": self.frame_index,
            "source_ts": self.source_ts,
            "capture_wall": self.capture_wall,
            "buffers": specs,
            "detections": None if self.detections is None else self.detections.tolist(),
            "track_ids": None if self.track_ids is None else self.track_ids.tolist(),
            "meta": self.meta,
            "trace": self.trace,
        }
        return [json.dumps(header, separators=(",", ":")).encode()] + [memoryview(a) for a in arrays]

    @classmethod
    def decode(cls, parts: list, shared: FrameStoreReader | None = None, defer: bool = False) -> "FrameMessage":
        """Parse received parts (bytes or zmq.Frame); raise MessageError on anything malformed: every
        header field is type-checked, so what comes out can be used without further checks. Buffers
        in shared memory are read through ``shared`` (None: this link takes none) once all the rest
        is checked, or with ``defer`` only by ``read_shared`` (a live stage reads only the frames it
        keeps)."""
        if not parts:
            raise MessageError("empty message")
        if len(parts) > 1 + MAX_BUFFERS:
            raise MessageError(f"{len(parts)} parts: a message holds a header and at most {MAX_BUFFERS} buffers")
        header = _parse_header(parts[0])
        stream_id = _stream_id(header)
        buffers, pending = _buffers(_typed(header, "buffers", list, []), parts[1:], shared is not None)
        msg = cls(stream_id=stream_id, frame_index=_count(header, "frame_index"),
                  source_ts=_number(header, "source_ts"), capture_wall=_number(header, "capture_wall"),
                  buffers=buffers, detections=_detections(header.get("detections")),
                  track_ids=_track_ids(header.get("track_ids")), meta=_typed(header, "meta", dict, {}),
                  trace=_trace(header.get("trace")), kind=header["kind"], pending=pending)
        if msg.track_ids is not None and (msg.detections is None or len(msg.track_ids) != len(msg.detections)):
            raise MessageError("track_ids must pair with the detections one to one")
        if not msg.is_eos:
            image = buffers.get("image")
            _, *spec = pending.get("image", (None, None, None))  # (a frame's image may still be in a ring)
            _check_image(*((image.shape, image.dtype) if image is not None else spec))
        if not defer and pending:
            msg.read_shared(shared)
        return msg

    def read_shared(self, shared: FrameStoreReader) -> None:
        """Read the buffers still in shared memory; StaleFrame where a slot was overwritten."""
        for name, (ref, shape, dtype) in list(self.pending.items()):
            try:
                self.buffers[name] = shared.read(ref, shape, dtype)
            except RingError as exc:
                raise MessageError(f"buffer {name[:40]!r}: {exc}") from None
            except StaleBuffer as exc:
                raise StaleFrame(self.stream_id, f"buffer {name[:40]!r}: {exc}") from None
            del self.pending[name]


def _buffers(specs: list, parts: list, takes_shared: bool) -> tuple[dict, dict]:
    """(buffers sent inline, buffers in shared memory as name -> (reference, shape, dtype))."""
    in_ring = [_in_ring(spec) for spec in specs]
    if len(specs) > MAX_BUFFERS:
        raise MessageError(f"header names {len(specs)} buffers: a message holds at most {MAX_BUFFERS}")
    if len(parts) != in_ring.count(False):
        raise MessageError(f"header names {in_ring.count(False)} buffers sent inline but {len(parts)} arrived")
    buffers, pending, inline_parts = {}, {}, iter(parts)
    for spec, shared in zip(specs, in_ring):
        name, shape, dtype = _buffer_spec(spec)
        if name in buffers or name in pending:
            raise MessageError(f"buffer {name[:40]!r} is named twice")
        if not shared:
            buffers[name] = _array_from_part(name, shape, dtype, next(inline_parts))
        elif not takes_shared:
            raise MessageError(f"buffer {name[:40]!r} is in shared memory, which this link does not take "
                               "(live mode, same host, transport.shared_memory)")
        else:
            try:
                pending[name] = (canonical_reference(spec["shared"]), shape, dtype)
            except RingError as exc:
                raise MessageError(f"buffer {name[:40]!r}: {exc}") from None
    return buffers, pending


def _raw(part) -> memoryview:
    return part.buffer if hasattr(part, "buffer") else memoryview(part)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _parse_header(part) -> dict:
    raw = _raw(part)
    if raw.nbytes > _MAX_HEADER_BYTES:
        raise MessageError(f"header of {raw.nbytes} bytes is over the {_MAX_HEADER_BYTES} limit")
    try:
        header = json.loads(bytes(raw), parse_constant=_reject_constant)  # no NaN / Infinity
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"header is not JSON ({exc.__class__.__name__})") from None
    except RecursionError:
        raise MessageError("header is nested too deeply") from None
    if not isinstance(header, dict) or header.get("v") != WIRE_VERSION:
        raise MessageError(f"header is not a v{WIRE_VERSION} frame header")
    if header.get("kind") not in (FRAME, EOS):
        raise MessageError(f"unknown message kind {header.get('kind')!r}")
    if _depth(header) > _MAX_DEPTH:
        raise MessageError(f"header is nested deeper than {_MAX_DEPTH} levels")
    return header


MAX_JSON_BYTES = 1 << 20  # an event or status message: one JSON object, thumbnails included


def decode_json_message(parts: list) -> tuple[str, dict]:
    """A side-channel message ``[topic, JSON object]`` (events, status snapshots) as (topic, object);
    MessageError for anything else: more parts, an oversized part, NaN/Infinity, deep nesting."""
    if len(parts) != 2:
        raise MessageError(f"a side-channel message has 2 parts (topic, JSON), got {len(parts)}")
    topic, raw = bytes(_raw(parts[0])).decode("utf-8", errors="replace"), _raw(parts[1])
    if raw.nbytes > MAX_JSON_BYTES:
        raise MessageError(f"{topic[:40]} message of {raw.nbytes} bytes is over the {MAX_JSON_BYTES} limit")
    try:
        payload = json.loads(bytes(raw), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"{topic[:40]} message is not JSON ({exc.__class__.__name__})") from None
    except RecursionError:
        raise MessageError(f"{topic[:40]} message is nested too deeply") from None
    if not isinstance(payload, dict) or _depth(payload) > _MAX_DEPTH:
        raise MessageError(f"{topic[:40]} message is not a JSON object of at most {_MAX_DEPTH} levels")
    return topic, payload


MAX_THUMBNAIL_BYTES = 512 << 10  # an event's JPEG thumbnail (track_confirmed)
JPEG_MAGIC = b"\xff\xd8\xff"


def event_thumbnail(event: dict) -> bytes | None:
    """The JPEG thumbnail of an event (``thumbnail_jpeg_b64``), or None: anything but a base64 JPEG
    under MAX_THUMBNAIL_BYTES is never passed on to browsers or alert receivers."""
    b64 = event.get("thumbnail_jpeg_b64")
    if not isinstance(b64, str) or len(b64) > MAX_THUMBNAIL_BYTES * 4 // 3 + 4:
        return None
    try:
        jpeg = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return jpeg if jpeg.startswith(JPEG_MAGIC) else None


def _depth(value, level: int = 0) -> int:
    if level > _MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _typed(header: dict, key: str, kind: type, default):
    value = header.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise MessageError(f"header field {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _stream_id(header: dict) -> str:
    value = header.get("stream_id")
    if not isinstance(value, str) or not valid_stream_id(value):
        raise MessageError(f"stream id {str(value)[:80]!r} is not [A-Za-z0-9_.-], 1 to 64 characters")
    return value


def valid_stream_id(value: str) -> bool:
    """A stream id names folders of the output: letters, digits, _ . - only, never . or .."""
    return bool(STREAM_ID.fullmatch(value)) and value not in (".", "..")


def _count(header: dict, key: str) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2 ** 53:
        raise MessageError(f"header field {key!r} must be a whole number >= 0, got {str(value)[:40]}")
    return value


def _number(header: dict, key: str) -> float:
    value = header.get(key)
    if not _plain_number(value):
        raise MessageError(f"header field {key!r} must be a number of seconds, got {str(value)[:40]}")
    return float(value)


def _plain_number(value) -> bool:
    """A time in seconds: an int or float, not bool, and not absurd (1e400 parses as inf, 10**400 as an int
    too large for a float; either would poison every latency figure downstream)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < MAX_SECONDS


def _detections(values) -> np.ndarray | None:
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(row, list) and len(row) == 6 for row in values):
        raise MessageError("detections must be a list of [x1, y1, x2, y2, score, class_id] rows")
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1, 6)
    except (TypeError, ValueError, OverflowError):
        raise MessageError("detections hold a value that is not a number") from None
    if not (np.abs(array) < FLOAT32_MAX).all():  # NaN fails too
        raise MessageError("detections hold a value that is not finite in float32")
    return array.astype(np.float32)


def _track_ids(values) -> np.ndarray | None:
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise MessageError("track_ids must be a list of whole numbers")
    try:
        return np.asarray(values, dtype=np.int64).reshape(-1)
    except OverflowError:
        raise MessageError("a track id is out of range") from None


def _trace(values) -> dict[str, float]:
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(_plain_number(v) for v in values.values()):
        raise MessageError("trace must map stage labels to times")
    return dict(values)


def _check_image(shape, dtype) -> None:
    """The image buffer's shape and dtype (read or still in shared memory; None: there is none)."""
    if dtype is None or np.dtype(dtype) != np.uint8 or shape is None or len(shape) != 3 or shape[2] != 3 or 0 in shape:
        got = None if shape is None else f"{dtype} {list(shape)}"
        raise MessageError(f"a frame needs a uint8 H x W x 3 'image' buffer, got {got}")


def _buffer_spec(spec) -> tuple[str, list[int], str]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("shape"), list):
        raise MessageError("a buffer spec must be {name: str, shape: [ints], dtype: str}")
    name, shape, dtype = spec["name"], spec["shape"], spec.get("dtype")
    if not isinstance(dtype, str) or dtype not in _ALLOWED_DTYPES:
        raise MessageError(f"buffer {name[:40]!r} has unsupported dtype {str(dtype)[:40]!r}")
    if len(shape) > 4 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 31 for v in shape):
        raise MessageError(f"buffer {name[:40]!r} shape must be up to 4 whole numbers >= 0")
    if buffer_bytes([max(v, 1) for v in shape], dtype) > MAX_BUFFER_EXTENT:
        # (numpy refuses such a shape even with a 0 in it: "array is too big")
        raise MessageError(f"buffer {name[:40]!r} shape {shape} is too large")
    return name, shape, dtype


def _in_ring(spec) -> bool:
    return isinstance(spec, dict) and "shared" in spec


def _array_from_part(name: str, shape: list[int], dtype: str, part) -> np.ndarray:
    raw = _raw(part)
    expected = buffer_bytes(shape, dtype)
    if raw.nbytes != expected:
        raise MessageError(f"buffer {name[:40]!r} holds {raw.nbytes} bytes, shape/dtype need {expected}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
