"""Frames through shared memory between the stages of one host, in live mode.

A 1080p frame is 6 MB; sent through a ZeroMQ ipc socket it is copied into the kernel and out again,
~2.5 ms of CPU per hop, and the transfer holds the link meanwhile. Here the sending stage writes each
large buffer into a ring of slots in a ``/dev/shm`` file of its own (one memcpy) and sends only a
reference (``{"ring", "slot", "token"}`` in the buffer's header entry); the next stage copies the
slot out. Every stage writes what it sends into its own ring, never passes an upstream reference
on: a slot then only has to outlive the queue of one link, not the whole frame path.

A slot is reused ``slots`` frames later. Each slot has a token: 0 while it is being written, then a
number that only grows. A reader copies the slot out and checks the token before and after: a slot
overwritten meanwhile is a stale frame (``StaleBuffer``, dropped and counted as such), never a torn
one. This relies on x86's store order (a locked instruction after the 0 orders it before memcpy's
streaming stores, and memcpy ends in a store fence), so other architectures send bytes (``available``). Live mode only: replay must never lose a frame, and a slot
cannot wait for a slow reader, so replay sends bytes.

Ring files are named ``lss-<run>-<pid>-<random>``, mode 0600, allocated up front (a full /dev/shm is
then one logged fallback to bytes, not a SIGBUS on a later write). The supervisor removes its run's
files when every stage has exited, so frames in flight stay readable until then. A reader accepts
only such names, a regular file of its own user, mode 0600, whose header matches its size, and a
slot within it.
"""
from __future__ import annotations

import logging
import math
import mmap
import os
import platform
import re
import secrets
import stat
import struct
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

log = logging.getLogger("pipeline.runtime.frame_store")
SHM_DIR = Path("/dev/shm")
RING_NAME = re.compile(r"lss-([0-9a-f]{1,32})-([1-9][0-9]{0,9})-[0-9a-f]{16}")  # run, writer pid, random
MAGIC = b"LSSRING1"
HEADER = struct.Struct("<8sQQ")  # magic, slots, bytes per slot
ALIGN = 64  # slots start on cache lines
MIN_SHARED_BYTES = 64 << 10  # smaller buffers (a few boxes' worth) go inline: a slot would cost more
RINGS_PER_STREAM = 4  # buffers of a stream a stage shares (image, input, annotated, ...); more go inline
READER_RINGS = 256  # mapped rings a reader keeps open (a few per upstream stage and stream)
GROWTH = 1.5  # a ring replaced for a larger frame gets room for one this much larger still


class StaleBuffer(Exception):
    """The slot a reference names was overwritten (or its ring is gone): the frame is stale."""


class RingError(ValueError):
    """A reference that names no valid ring or slot: a malformed message."""


def available() -> bool:
    """Whether this host can share frames: POSIX shared memory as files (Linux), and x86's store
    order, which the token check relies on."""
    return (platform.machine().lower() in ("x86_64", "amd64") and SHM_DIR.is_dir()
            and os.access(SHM_DIR, os.W_OK))


def run_tag(session: str) -> str:
    """The run part of a ring's name: the supervisor's session id, or "0" for a stage run alone."""
    return session if re.fullmatch(r"[0-9a-f]{1,32}", session or "") else "0"


def buffer_bytes(shape: list[int], dtype: str) -> int:
    """The bytes of a buffer of a checked shape (whole numbers; math.prod: np.prod is slow on a list
    and wraps around in int64)."""
    return math.prod(shape) * np.dtype(dtype).itemsize


def _layout(slots: int, slot_bytes: int) -> tuple[int, int, int]:
    """(offset of the first slot, stride between slots, file size)."""
    first = -(-(HEADER.size + 8 * slots) // ALIGN) * ALIGN
    stride = -(-slot_bytes // ALIGN) * ALIGN
    return first, stride, first + stride * slots


class FrameRing:
    """One writer's ring: ``slots`` slots of ``slot_bytes`` in a file of its own. OSError where the
    file cannot be made (then nothing is left behind)."""

    def __init__(self, run: str, slots: int, slot_bytes: int):
        self.name = f"lss-{run}-{os.getpid()}-{secrets.token_hex(8)}"
        self.slots, self.slot_bytes = slots, slot_bytes
        self.first, self.stride, size = _layout(slots, slot_bytes)
        path = SHM_DIR / self.name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # every page now: a full /dev/shm fails here, not as a SIGBUS
            self.map = mmap.mmap(fd, size)
        except OSError:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self.map[:HEADER.size] = HEADER.pack(MAGIC, slots, slot_bytes)
        self.tokens = np.ndarray((slots,), np.uint64, self.map, HEADER.size)
        self.written = 0
        self.fence = threading.Lock()

    def put(self, array: np.ndarray) -> dict:
        """Write ``array`` into the next slot; its reference."""
        slot = self.written % self.slots
        self.written += 1
        self.tokens[slot] = 0  # being written: a reader of the slot's last frame sees it changed
        with self.fence:  # a locked instruction: the 0 is visible before any of memcpy's streaming stores
            pass
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
    """A sending stage's rings, one per stream and buffer name (at most RINGS_PER_STREAM a stream);
    a ring too small for a frame (the source changed resolution) is replaced by a larger one. Where
    /dev/shm has no room, buffers go inline from then on (said once in the log)."""

    def __init__(self, slots: int, session: str = ""):
        self.slots, self.run = slots, run_tag(session)
        self.rings: dict[tuple[str, str], FrameRing] = {}
        self.failed = False

    def share(self, stream_id: str, name: str, array: np.ndarray) -> dict | None:
        """The reference of ``array`` written into its ring; None where it goes inline (small, one
        buffer too many for its stream, or no room in /dev/shm)."""
        if array.nbytes < MIN_SHARED_BYTES or self.failed:
            return None
        key = (stream_id, name)
        ring = self.rings.get(key)
        if ring is None and sum(s == stream_id for s, _ in self.rings) >= RINGS_PER_STREAM:
            return None
        if ring is None or ring.slot_bytes < array.nbytes:
            room = array.nbytes if ring is None else max(array.nbytes, int(ring.slot_bytes * GROWTH))
            ring = self._replace(key, room)
            if ring is None:
                return None
        return ring.put(array)

    def _replace(self, key: tuple[str, str], slot_bytes: int) -> FrameRing | None:
        old = self.rings.pop(key, None)
        if old is not None:
            old.close()  # (its file stays until the run ends: a reader may be behind)
        try:
            ring = self.rings[key] = FrameRing(self.run, self.slots, slot_bytes)
            return ring
        except OSError as exc:
            self.failed = True
            log.warning("shared memory: cannot make a %d x %.1f MB ring in %s (%s): frames go through the "
                        "sockets from now on", self.slots, slot_bytes / (1 << 20), SHM_DIR, exc.strerror or exc)
            return None

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
        nbytes = buffer_bytes(shape, dtype)
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
        try:  # (non-blocking: a FIFO of that name must not hang the stage; no links followed)
            fd = os.open(SHM_DIR / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StaleBuffer(f"ring {name} is gone") from None
        except OSError as exc:
            raise RingError(f"ring {name} cannot be opened ({exc.strerror})") from None
        try:
            ring = _map_ring(fd, name)
        finally:
            os.close(fd)
        self.maps[name] = ring
        if len(self.maps) > READER_RINGS:
            self.maps.popitem(last=False)[1][0].close()
        return ring

    def close(self) -> None:
        for ring, _, _ in self.maps.values():
            ring.close()
        self.maps.clear()


def _map_ring(fd: int, name: str) -> tuple[mmap.mmap, int, int]:
    """(map, slots, bytes per slot) of an open ring file; RingError for anything that is not one of
    this user's private ring files."""
    try:
        info = os.fstat(fd)
    except OSError as exc:
        raise RingError(f"ring {name} cannot be read ({exc.strerror})") from None
    if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077
            or info.st_size < HEADER.size):
        raise RingError(f"ring {name} is not a private frame ring of this user")
    try:
        ring = mmap.mmap(fd, info.st_size, prot=mmap.PROT_READ)
    except (OSError, ValueError, OverflowError) as exc:
        raise RingError(f"ring {name} cannot be mapped ({exc})") from None
    magic, slots, slot_bytes = HEADER.unpack(ring[:HEADER.size])
    if magic != MAGIC or not 0 < slots < 1 << 20 or _layout(slots, slot_bytes)[2] != info.st_size:
        ring.close()
        raise RingError(f"ring {name} is not a frame ring")
    return ring, slots, slot_bytes


def canonical_reference(ref) -> dict:
    """A slot reference as the message named it, checked: {ring, slot, token} and nothing else."""
    name, slot, token = _reference(ref)
    return {"ring": name, "slot": slot, "token": token}


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
    for path in SHM_DIR.glob("lss-*") if SHM_DIR.is_dir() else ():
        match = RING_NAME.fullmatch(path.name)
        if match and not Path(f"/proc/{match[2]}").exists() and _own(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _own(path: Path) -> bool:
    try:
        return path.lstat().st_uid == os.getuid()
    except OSError:
        return False


def remove_rings(session: str, pid: int | None = None) -> int:
    """Remove the ring files of a run (``session``: the supervisor's id), or of one of its processes
    that has exited; how many there were."""
    pattern = f"lss-{run_tag(session)}-{'*' if pid is None else int(pid)}-*"
    removed = 0
    for path in SHM_DIR.glob(pattern) if SHM_DIR.is_dir() else ():
        if RING_NAME.fullmatch(path.name) and _own(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
