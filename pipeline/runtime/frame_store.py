"""Frames through shared memory between the stages of one host, in live mode.

A 1080p frame is 6 MB; sent through a ZeroMQ ipc socket it is copied into the kernel and out again,
and each stage passes it on, so a frame path of five stages moved ~30 MB a frame (the image, and the
annotated picture beside it), ~2.5 ms of CPU per hop at 1080p. Here the sending stage writes a large
buffer once into a ring of slots in a ``/dev/shm`` file of its own and sends only a reference
(``{"ring", "slot", "token"}`` in the buffer's header entry); every later stage reads the slot (one
memcpy) and a buffer it passes on unchanged goes on as the same reference.

A slot is reused ``slots`` frames later. Each slot has a token: 0 while it is being written, then a
number that only grows. A reader copies the slot out and checks the token before and after: a slot
overwritten meanwhile is a stale frame (``StaleBuffer``, dropped and counted as such), never a torn
one. (This relies on x86's store order; the writer's memcpy ends in a store fence.) Live mode only:
replay must never lose a frame, and a slot cannot wait for a slow reader, so replay sends bytes.

Ring files are named ``lss-<pid>-<random>``, mode 0600; the supervisor removes a stage's files when
the process has exited (``remove_rings``), so frames in flight stay readable until the run ends. A
reader accepts only these names, a file whose header matches its size, and a slot within it.
"""
from __future__ import annotations

import mmap
import os
import re
import secrets
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm")
RING_NAME = re.compile(r"lss-[0-9]{1,10}-[0-9a-f]{16}")
MAGIC = b"LSSRING1"
HEADER = struct.Struct("<8sQQ")  # magic, slots, bytes per slot
ALIGN = 64  # slots start on cache lines
MIN_SHARED_BYTES = 64 << 10  # smaller buffers (a few boxes' worth) go inline: a slot would cost more
READER_RINGS = 64  # mapped rings a reader keeps open (a few per upstream stage and stream)


class StaleBuffer(Exception):
    """The slot a reference names was overwritten (or its ring is gone): the frame is stale."""


class RingError(ValueError):
    """A reference that names no valid ring or slot: a malformed message."""


def available() -> bool:
    """Whether this host has POSIX shared memory as files (Linux)."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def _layout(slots: int, slot_bytes: int) -> tuple[int, int, int]:
    """(offset of the first slot, stride between slots, file size)."""
    first = -(-(HEADER.size + 8 * slots) // ALIGN) * ALIGN
    stride = -(-slot_bytes // ALIGN) * ALIGN
    return first, stride, first + stride * slots


class FrameRing:
    """One writer's ring: ``slots`` slots of ``slot_bytes`` in a file of its own."""

    def __init__(self, slots: int, slot_bytes: int):
        self.name = f"lss-{os.getpid()}-{secrets.token_hex(8)}"
        self.slots, self.slot_bytes = slots, slot_bytes
        self.first, self.stride, size = _layout(slots, slot_bytes)
        fd = os.open(SHM_DIR / self.name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.map[:HEADER.size] = HEADER.pack(MAGIC, slots, slot_bytes)
        self.tokens = np.ndarray((slots,), np.uint64, self.map, HEADER.size)
        self.written = 0

    def put(self, array: np.ndarray) -> dict:
        """Write ``array`` into the next slot; its reference."""
        slot = self.written % self.slots
        self.written += 1
        self.tokens[slot] = 0  # being written: a reader of the slot's last frame sees it changed
        target = np.ndarray((array.nbytes,), np.uint8, self.map, self.first + slot * self.stride)
        np.copyto(target, np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        self.tokens[slot] = self.written
        return {"ring": self.name, "slot": slot, "token": self.written}

    def close(self, unlink: bool = False) -> None:
        self.tokens = None  # (no view may outlive the map)
        self.map.close()
        if unlink:
            (SHM_DIR / self.name).unlink(missing_ok=True)


class FrameStore:
    """A sending stage's rings, one per stream and buffer name; a ring too small for a frame (the
    source changed resolution) is replaced by a larger one."""

    def __init__(self, slots: int):
        self.slots = slots
        self.rings: dict[tuple[str, str], FrameRing] = {}

    def share(self, stream_id: str, name: str, array: np.ndarray) -> dict | None:
        """The reference of ``array`` written into its ring; None for a small one (sent inline)."""
        if array.nbytes < MIN_SHARED_BYTES:
            return None
        key = (stream_id, name)
        ring = self.rings.get(key)
        if ring is None or ring.slot_bytes < array.nbytes:
            if ring is not None:
                ring.close()  # (its file stays until the supervisor removes it: readers may be behind)
            ring = self.rings[key] = FrameRing(self.slots, array.nbytes)
        return ring.put(array)

    def close(self, unlink: bool = False) -> None:
        """``unlink``: remove the files too (a stage whose supervisor is gone: nobody else will)."""
        for ring in self.rings.values():
            ring.close(unlink)
        self.rings.clear()


class FrameStoreReader:
    """A receiving stage's view of the rings of the stages before it."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes  # the largest buffer taken (transport.max_message_mb, as for bytes)
        self.maps: OrderedDict[str, tuple[mmap.mmap, int, int]] = OrderedDict()  # name -> map, slots, slot bytes

    def read(self, ref, shape: list[int], dtype: str) -> np.ndarray:
        """A read-only copy of the slot ``ref`` names; RingError for a bad reference, StaleBuffer for
        an overwritten slot or a ring that is gone."""
        name, slot, token = _reference(ref)
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if nbytes > self.max_bytes:
            raise RingError(f"a {nbytes}-byte shared buffer is over transport.max_message_mb")
        ring, slots, slot_bytes = self._open(name)
        if slot >= slots or nbytes > slot_bytes:
            raise RingError(f"ring {name}: slot {slot} of {nbytes} bytes is outside its {slots} x {slot_bytes}")
        first, stride, _ = _layout(slots, slot_bytes)
        tokens = np.ndarray((slots,), np.uint64, ring, HEADER.size)
        if int(tokens[slot]) != token:
            raise StaleBuffer(f"ring {name} slot {slot} was overwritten")
        array = self._copy(ring, first + slot * stride, nbytes)
        if int(tokens[slot]) != token:  # written over while we copied: torn, so stale
            raise StaleBuffer(f"ring {name} slot {slot} was overwritten while read")
        array = array.view(dtype).reshape(shape)
        array.flags.writeable = False  # as a buffer received as bytes: a stage makes its own copies
        return array

    @staticmethod
    def _copy(ring: mmap.mmap, offset: int, nbytes: int) -> np.ndarray:
        return np.ndarray((nbytes,), np.uint8, ring, offset).copy()

    def _open(self, name: str) -> tuple[mmap.mmap, int, int]:
        if name in self.maps:
            self.maps.move_to_end(name)
            return self.maps[name]
        try:
            fd = os.open(SHM_DIR / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise StaleBuffer(f"ring {name} is gone") from None
        except OSError as exc:
            raise RingError(f"ring {name} cannot be opened ({exc.strerror})") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER.size:
                raise RingError(f"ring {name} is not a frame ring")
            ring = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, slots, slot_bytes = HEADER.unpack(ring[:HEADER.size])
        if magic != MAGIC or not 0 < slots < 1 << 20 or _layout(slots, slot_bytes)[2] != size:
            ring.close()
            raise RingError(f"ring {name} is not a frame ring")
        self.maps[name] = (ring, slots, slot_bytes)
        if len(self.maps) > READER_RINGS:
            self.maps.popitem(last=False)[1][0].close()
        return self.maps[name]

    def close(self) -> None:
        for ring, _, _ in self.maps.values():
            ring.close()
        self.maps.clear()


def _reference(ref) -> tuple[str, int, int]:
    if not isinstance(ref, dict):
        raise RingError("a shared buffer reference must be {ring, slot, token}")
    name, slot, token = ref.get("ring"), ref.get("slot"), ref.get("token")
    if not isinstance(name, str) or not RING_NAME.fullmatch(name):
        raise RingError(f"ring name {str(name)[:60]!r} is not one of this pipeline's")
    for value, least in ((slot, 0), (token, 1)):  # (token 0 marks a slot being written)
        if not isinstance(value, int) or isinstance(value, bool) or not least <= value < 2 ** 63:
            raise RingError("a shared buffer's slot must be a whole number >= 0 and its token >= 1")
    return name, slot, token


def remove_dead_rings() -> int:
    """Remove the ring files of processes that no longer run (a run whose supervisor was killed);
    how many there were. A file of a live process, or of another user, is left alone."""
    removed = 0
    for path in SHM_DIR.glob("lss-*-*") if SHM_DIR.is_dir() else ():
        pid = path.name.split("-")[1]
        if RING_NAME.fullmatch(path.name) and not Path(f"/proc/{pid}").exists() and _own(path):
            removed += remove_rings(int(pid))
    return removed


def _own(path: Path) -> bool:
    try:
        return path.stat().st_uid == os.getuid()
    except OSError:
        return False


def remove_rings(pid: int) -> int:
    """Remove the ring files of a stage process that has exited; how many there were."""
    removed = 0
    for path in SHM_DIR.glob(f"lss-{int(pid)}-*") if SHM_DIR.is_dir() else ():
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed
