"""pipeline/runtime/frame_store.py: frames through /dev/shm rings, references as untrusted input."""
import json
import os

import numpy as np
import pytest

from pipeline.runtime import frame_store
from pipeline.runtime.frame_store import (SHM_DIR, FrameStore, FrameStoreReader, RingError, StaleBuffer,
                                          remove_rings)
from pipeline.runtime.messages import FrameMessage, MessageError, StaleFrame

pytestmark = pytest.mark.skipif(not frame_store.available(), reason="needs /dev/shm (Linux shared memory)")
MAX_BYTES = 64 << 20


@pytest.fixture
def store():
    """A store of 4 slots per ring; its files are removed afterwards, as the supervisor does."""
    store = FrameStore(slots=4)
    yield store
    store.close()
    remove_rings("", os.getpid())  # (a stage run alone names its rings as run "0"; only ours go)


def frame(value: int, shape=(240, 320, 3)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def test_a_shared_buffer_reads_back_equal_and_read_only(store):
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    ref = store.share("cam", "image", image)
    read = FrameStoreReader(MAX_BYTES).read(ref, list(image.shape), "uint8")
    assert np.array_equal(read, image) and not read.flags.writeable
    image[:] = 0  # the reader holds a copy: the writer's array and later slots are its own business
    assert read.any()


def test_small_buffers_stay_inline(store):
    assert store.share("cam", "boxes", np.zeros((10, 6), np.float32)) is None
    assert store.rings == {}


def test_a_slot_reused_before_it_was_read_is_stale_not_wrong(store):
    refs = [store.share("cam", "image", frame(i)) for i in range(5)]  # 4 slots: the first was written over
    reader = FrameStoreReader(MAX_BYTES)
    with pytest.raises(StaleBuffer):
        reader.read(refs[0], [240, 320, 3], "uint8")
    assert reader.read(refs[4], [240, 320, 3], "uint8")[0, 0, 0] == 4
    assert reader.read(refs[1], [240, 320, 3], "uint8")[0, 0, 0] == 1


def test_a_slot_being_written_is_stale(store):
    ref = store.share("cam", "image", frame(7))
    store.rings[("cam", "image")].tokens[ref["slot"]] = 0  # what a reader sees in the middle of a write
    with pytest.raises(StaleBuffer, match="overwritten$"):  # (the check before the copy)
        FrameStoreReader(MAX_BYTES).read(ref, [240, 320, 3], "uint8")


def test_a_slot_written_over_while_it_is_copied_is_stale_not_torn(store):
    ref = store.share("cam", "image", frame(1))

    class SlowReader(FrameStoreReader):
        def _copy(self, ring, offset, nbytes):
            copied = super()._copy(ring, offset, nbytes)
            for i in range(4):  # meanwhile the writer went round its ring once
                store.share("cam", "image", frame(2 + i))
            return copied

    with pytest.raises(StaleBuffer, match="while read"):
        SlowReader(MAX_BYTES).read(ref, [240, 320, 3], "uint8")


def test_a_larger_frame_gets_a_new_ring_and_the_old_one_stays_readable(store):
    small = store.share("cam", "image", frame(1))
    large = store.share("cam", "image", frame(2, (480, 640, 3)))
    assert small["ring"] != large["ring"]
    reader = FrameStoreReader(MAX_BYTES)
    assert reader.read(small, [240, 320, 3], "uint8")[0, 0, 0] == 1
    assert reader.read(large, [480, 640, 3], "uint8")[0, 0, 0] == 2


def test_streams_and_buffers_have_rings_of_their_own(store):
    refs = [store.share(stream, name, frame(i)) for i, (stream, name) in
            enumerate([("a", "image"), ("b", "image"), ("a", "annotated")])]
    assert len({ref["ring"] for ref in refs}) == 3


def test_ring_files_are_private_and_removed_by_pid(store):
    ref = store.share("cam", "image", frame(1))
    path = SHM_DIR / ref["ring"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert remove_rings("", os.getpid()) == 1 and not path.exists()
    with pytest.raises(StaleBuffer):  # a ring gone before anyone opened it: its frames are stale
        FrameStoreReader(MAX_BYTES).read(ref, [240, 320, 3], "uint8")


@pytest.mark.parametrize("change, why", [
    ({"ring": "../../etc/passwd"}, "not one of this pipeline's"),
    ({"ring": "lss-0-1-0123456789abcdef/../x"}, "not one of this pipeline's"),
    ({"ring": "lss-0-007-0123456789abcdef"}, "not one of this pipeline's"),  # (no leading zeros in a pid)
    ({"ring": 5}, "not one of this pipeline's"),
    ({"slot": -1}, "whole number"),
    ({"slot": True}, "whole number"),
    ({"token": 0}, "token >= 1"),
    ({"slot": 4}, "outside"),
])
def test_bad_references_are_refused_in_one_line(store, change, why):
    ref = {**store.share("cam", "image", frame(1)), **change}
    with pytest.raises(RingError, match=why):
        FrameStoreReader(MAX_BYTES).read(ref, [240, 320, 3], "uint8")


def test_a_shape_larger_than_the_slot_or_the_message_limit_is_refused(store):
    ref = store.share("cam", "image", frame(1))
    with pytest.raises(RingError, match="outside"):
        FrameStoreReader(MAX_BYTES).read(ref, [241, 320, 3], "uint8")
    with pytest.raises(RingError, match="max_message_mb"):
        FrameStoreReader(1000).read(ref, [240, 320, 3], "uint8")
    with pytest.raises(RingError):
        FrameStoreReader(MAX_BYTES).read("not a dict", [240, 320, 3], "uint8")


def test_a_file_that_is_not_a_ring_is_refused(tmp_path):
    name = f"lss-0-{os.getpid()}-{'ab' * 8}"
    (SHM_DIR / name).write_bytes(b"x" * 4096)
    (SHM_DIR / name).chmod(0o600)
    try:
        with pytest.raises(RingError, match="not a frame ring"):
            FrameStoreReader(MAX_BYTES).read({"ring": name, "slot": 0, "token": 1}, [4, 4, 3], "uint8")
    finally:
        remove_rings("", os.getpid())


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "readable by others"])
def test_what_is_not_a_private_ring_file_is_refused_without_hanging(store, kind):
    """A name of the right form in /dev/shm that some other process of this host put there: a FIFO
    must not block the stage, a directory or a link must not crash it or be followed."""
    real = store.share("cam", "image", frame(1))
    path = SHM_DIR / f"lss-0-{os.getpid()}-{'ef' * 8}"
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        path.mkdir(0o700)
    elif kind == "symlink":
        path.symlink_to(SHM_DIR / real["ring"])
    else:
        path.write_bytes((SHM_DIR / real["ring"]).read_bytes())
        path.chmod(0o644)
    try:
        with pytest.raises(RingError):
            FrameStoreReader(MAX_BYTES).read({**real, "ring": path.name}, [240, 320, 3], "uint8")
    finally:
        path.rmdir() if kind == "directory" else path.unlink()


def test_a_full_shm_folder_sends_bytes_from_then_on_and_leaves_no_file(store, monkeypatch, caplog):
    tries = []

    def no_room(fd, offset, length):
        tries.append(length)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(frame_store.os, "posix_fallocate", no_room)
    assert store.share("cam", "image", frame(1)) is None and store.failed
    assert not list(SHM_DIR.glob(f"lss-0-{os.getpid()}-*"))
    assert "frames go through the sockets" in caplog.text
    assert store.share("cam", "image", frame(2)) is None and len(tries) == 1  # said and tried once, not every frame


def test_a_stream_shares_a_few_buffers_and_sends_the_rest_inline(store):
    refs = [store.share("cam", f"buffer{i}", frame(i)) for i in range(frame_store.RINGS_PER_STREAM + 2)]
    assert all(refs[:frame_store.RINGS_PER_STREAM]) and refs[-2:] == [None, None]
    assert store.share("other", "buffer9", frame(1)) is not None  # (per stream)


def test_a_ring_outgrown_by_small_steps_is_replaced_rarely(store):
    names = {store.share("cam", "image", np.zeros(200_000 + step * 1000, np.uint8))["ring"] for step in range(40)}
    assert len(names) == 2  # the second ring has room for 1.5 x the frame that outgrew the first


# ---------------------------------------------------------------- through the message format
def test_a_message_names_its_slot_instead_of_sending_the_bytes(store):
    msg = FrameMessage("cam", 3, 0.1, 0.2, {"image": frame(5), "boxes": np.zeros((2, 6), np.float32)})
    parts = msg.encode(store)
    spec = {s["name"]: s for s in json.loads(bytes(parts[0]))["buffers"]}
    assert "shared" in spec["image"] and "shared" not in spec["boxes"] and len(parts) == 2  # header + boxes
    back = FrameMessage.decode(parts, FrameStoreReader(MAX_BYTES))
    assert np.array_equal(back.image, msg.image) and np.array_equal(back.buffers["boxes"], msg.buffers["boxes"])
    with pytest.raises(MessageError, match="does not take"):  # a link without shared memory
        FrameMessage.decode(parts)


def test_each_stage_writes_what_it_sends_into_its_own_ring(store):
    """A buffer passed on unchanged is written again by the stage that sends it: a slot then only has
    to outlive one link's queue, not the whole frame path (a slow stage would otherwise get frames
    whose first slot was long reused)."""
    first = FrameMessage.decode(FrameMessage("cam", 0, 0.0, 0.0, {"image": frame(5)}).encode(store),
                                FrameStoreReader(MAX_BYTES))
    next_stage = FrameStore(slots=4)
    try:
        spec = {s["name"]: s["shared"] for s in json.loads(bytes(first.encode(next_stage)[0]))["buffers"]}
        assert spec["image"]["ring"] == next_stage.rings[("cam", "image")].name
        for i in range(4):  # the first stage's ring goes round: the second stage's copy is still there
            store.share("cam", "image", frame(i))
        assert FrameStoreReader(MAX_BYTES).read(spec["image"], [240, 320, 3], "uint8")[0, 0, 0] == 5
    finally:
        next_stage.close()


def test_a_deferred_frame_is_checked_first_and_read_later(store):
    parts = FrameMessage("cam", 0, 0.0, 0.0, {"image": frame(5)}).encode(store)
    msg = FrameMessage.decode(parts, FrameStoreReader(MAX_BYTES), defer=True)
    assert "image" not in msg.buffers and list(msg.pending) == ["image"]
    msg.read_shared(FrameStoreReader(MAX_BYTES))
    assert msg.image[0, 0, 0] == 5 and not msg.pending
    header = json.loads(bytes(parts[0]))
    header["buffers"][0]["shape"] = [240, 320, 4]  # the image's shape is checked before anything is read
    with pytest.raises(MessageError, match="H x W x 3"):
        FrameMessage.decode([json.dumps(header).encode()], FrameStoreReader(MAX_BYTES), defer=True)


def test_a_buffer_named_twice_or_of_an_absurd_shape_is_malformed(store):
    parts = FrameMessage("cam", 0, 0.0, 0.0, {"image": frame(5)}).encode(store)
    header = json.loads(bytes(parts[0]))
    twice = {**header, "buffers": header["buffers"] * 2}
    with pytest.raises(MessageError, match="named twice"):
        FrameMessage.decode([json.dumps(twice).encode()], FrameStoreReader(MAX_BYTES))
    for shape in ([2 ** 30, 2 ** 30, 16], [2 ** 31 - 1] * 4, [0, 2 ** 31 - 1, 2 ** 31 - 1, 2 ** 31 - 1]):
        huge = {**header, "buffers": [{**header["buffers"][0], "name": "extra", "shape": shape}, header["buffers"][0]]}
        with pytest.raises(MessageError, match="too large"):
            FrameMessage.decode([json.dumps(huge).encode()], FrameStoreReader(MAX_BYTES))
    inline = FrameMessage("cam", 0, 0.0, 0.0, {"image": frame(5)}).encode()
    header = json.loads(bytes(inline[0]))
    header["buffers"].append({"name": "empty", "shape": [0, 2 ** 31 - 1, 2 ** 31 - 1, 2 ** 31 - 1], "dtype": "uint8"})
    with pytest.raises(MessageError, match="too large"):  # (0 bytes, yet numpy cannot make that shape)
        FrameMessage.decode([json.dumps(header).encode(), inline[1], b""])
    for dtype in (["uint8"], {"a": 1}, 5):
        header["buffers"] = [{**header["buffers"][0], "dtype": dtype}]
        with pytest.raises(MessageError, match="unsupported dtype"):
            FrameMessage.decode([json.dumps(header).encode(), inline[1]])


def test_a_stale_slot_is_a_stale_frame_of_its_stream(store):
    parts = FrameMessage("cam", 0, 0.0, 0.0, {"image": frame(5)}).encode(store)
    for i in range(4):
        store.share("cam", "image", frame(i))
    with pytest.raises(StaleFrame) as caught:
        FrameMessage.decode(parts, FrameStoreReader(MAX_BYTES))
    assert caught.value.stream_id == "cam"


def test_a_bad_reference_in_a_message_is_malformed(store):
    parts = FrameMessage("cam", 0, 0.0, 0.0, {"image": frame(5)}).encode(store)
    header = json.loads(bytes(parts[0]))
    header["buffers"][0]["shared"]["ring"] = "/dev/zero"
    with pytest.raises(MessageError, match="not one of this pipeline's") as caught:
        FrameMessage.decode([json.dumps(header).encode()], FrameStoreReader(MAX_BYTES))
    assert not isinstance(caught.value, StaleFrame)


def test_rings_of_processes_that_no_longer_run_are_removed(store):
    import subprocess
    import sys

    ref = store.share("cam", "image", frame(1))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = SHM_DIR / f"lss-0a1b-{int(dead.stdout)}-{'cd' * 8}"  # what a killed run leaves
    leftover.write_bytes(b"x")
    try:
        assert frame_store.remove_dead_rings() >= 1
        assert not leftover.exists() and (SHM_DIR / ref["ring"]).exists()  # this live process's ring stays
    finally:
        leftover.unlink(missing_ok=True)


def test_a_run_removes_its_own_rings_and_no_other_runs(store):
    session = os.urandom(6).hex()  # (not one a parallel run could have)
    other_run = FrameStore(slots=2, session=session)
    try:
        mine, theirs = store.share("cam", "image", frame(1)), other_run.share("cam", "image", frame(1))
        assert remove_rings(session) == 1
        assert (SHM_DIR / mine["ring"]).exists() and not (SHM_DIR / theirs["ring"]).exists()
    finally:
        other_run.close()


def test_a_store_closed_with_unlink_leaves_no_file(store):
    ref = store.share("cam", "image", frame(1))
    store.close(unlink=True)
    assert not (SHM_DIR / ref["ring"]).exists()
