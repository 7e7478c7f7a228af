"""The one message type that flows between stages: a frame and its metadata.

Wire format (ZeroMQ multipart, no pickle):
  part 0    UTF-8 JSON header
  part 1..n one raw buffer per entry of header["buffers"] (name, shape, dtype), sent zero-copy

A header with ``kind == "eos"`` carries no buffers and marks the end of one stream; its ``frame_index``
is the stream's frame count as its source counted it (the index after its last frame; 0: unknown).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WIRE_VERSION = 1
FRAME, EOS = "frame", "eos"
_ALLOWED_DTYPES = {"uint8", "float32", "float16", "int32", "int64"}
_MAX_HEADER_BYTES = 1 << 20


class MessageError(ValueError):
    """A received message does not follow the wire format; the stage drops and counts it."""


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

    def encode(self) -> list:
        """Multipart parts: JSON header, then the buffers themselves (no copy)."""
        arrays = [np.ascontiguousarray(a) for a in self.buffers.values()]
        header = {
            "v": WIRE_VERSION,
            "kind": self.kind,
            "stream_id": self.stream_id,
            "frame_index": self.frame_index,
            "source_ts": self.source_ts,
            "capture_wall": self.capture_wall,
            "buffers": [
                {"name": name, "shape": list(a.shape), "dtype": str(a.dtype)}
                for name, a in zip(self.buffers, arrays)
            ],
            "detections": None if self.detections is None else self.detections.tolist(),
            "track_ids": None if self.track_ids is None else self.track_ids.tolist(),
            "meta": self.meta,
            "trace": self.trace,
        }
        return [json.dumps(header, separators=(",", ":")).encode()] + [memoryview(a) for a in arrays]

    @classmethod
    def decode(cls, parts: list) -> "FrameMessage":
        """Parse received parts (bytes or zmq.Frame); raise MessageError on anything malformed."""
        if not parts:
            raise MessageError("empty message")
        header = _parse_header(parts[0])
        specs = header.get("buffers", [])
        if len(parts) != 1 + len(specs):
            raise MessageError(f"header names {len(specs)} buffers but {len(parts) - 1} arrived")
        try:
            buffers = {spec["name"]: _array_from_part(spec, part) for spec, part in zip(specs, parts[1:])}
            return cls(
                stream_id=str(header["stream_id"]),
                frame_index=int(header["frame_index"]),
                source_ts=float(header["source_ts"]),
                capture_wall=float(header["capture_wall"]),
                buffers=buffers,
                detections=_optional_array(header.get("detections"), np.float32, (-1, 6)),
                track_ids=_optional_array(header.get("track_ids"), np.int64, (-1,)),
                meta=dict(header.get("meta") or {}),
                trace=dict(header.get("trace") or {}),
                kind=header["kind"],
            )
        except MessageError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"bad header field: {exc!r}") from None


def _raw(part) -> memoryview:
    return part.buffer if hasattr(part, "buffer") else memoryview(part)


def _parse_header(part) -> dict:
    raw = _raw(part)
    if raw.nbytes > _MAX_HEADER_BYTES:
        raise MessageError(f"header of {raw.nbytes} bytes is over the {_MAX_HEADER_BYTES} limit")
    try:
        header = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"header is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict) or header.get("v") != WIRE_VERSION:
        raise MessageError(f"header is not a v{WIRE_VERSION} frame header")
    if header.get("kind") not in (FRAME, EOS):
        raise MessageError(f"unknown message kind {header.get('kind')!r}")
    return header


def _array_from_part(spec: dict, part) -> np.ndarray:
    dtype = spec.get("dtype")
    if dtype not in _ALLOWED_DTYPES:
        raise MessageError(f"buffer {spec.get('name')!r} has unsupported dtype {dtype!r}")
    shape = tuple(int(s) for s in spec["shape"])
    if any(s < 0 for s in shape):
        raise MessageError(f"buffer {spec['name']!r} has a negative dimension")
    raw = _raw(part)
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if raw.nbytes != expected:
        raise MessageError(f"buffer {spec['name']!r} holds {raw.nbytes} bytes, shape/dtype need {expected}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _optional_array(values, dtype, shape) -> np.ndarray | None:
    if values is None:
        return None
    return np.asarray(values, dtype=dtype).reshape(shape)
