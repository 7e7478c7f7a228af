"""pipeline/stage.py: the stage runner's end-of-stream duties, over real ZeroMQ sockets."""
import contextlib
import json
import os
import signal
import time

import numpy as np
import pytest
import zmq

from pipeline.runtime import frame_store
from pipeline.runtime.config import config_from_dict
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.stage import Stage, StageRunner
from pipeline.runtime.transport import open_socket


class Passthrough(Stage):
    """A frame stage registered from this test module (frame path: capture -> passthrough -> record)."""

    name = "passthrough"


def _config(tmp_path, **keys):
    return config_from_dict({"sources": [{"id": "a", "uri": "x.mp4"}, {"id": "b", "uri": "y.mp4"}],
                             "output_dir": str(tmp_path), "transport": {"ipc_dir": str(tmp_path / "ipc")},
                             "frame_path": ["capture", f"{__name__}:passthrough", "record"], **keys},
                            check_files=False)


@contextlib.contextmanager
def runner_for(cfg):
    """A passthrough-stage runner, and the socket its downstream stage would bind."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
    ctx = zmq.Context()
    downstream = open_socket(ctx, cfg.endpoint("record_in"), hwm=16)
    runner = StageRunner(Passthrough(cfg), cfg)
    try:
        yield runner, downstream
    finally:
        for sock in (runner.inp, runner.out, runner.control):
            sock.close(0)
        runner.ctx.term()
        downstream.close(0)
        ctx.term()
        for sig, handler in handlers.items():  # the runner installs a stage process's handlers
            signal.signal(sig, handler)


@pytest.fixture
def runner_and_downstream(tmp_path):
    """A passthrough-stage runner on streams a and b (replay)."""
    with runner_for(_config(tmp_path)) as pair:
        yield pair


def received(downstream) -> FrameMessage:
    assert downstream.poll(2000)
    return FrameMessage.decode(downstream.recv_multipart(copy=False))


def test_sigusr2_sends_the_end_of_finished_streams_again(runner_and_downstream):
    """The supervisor's answer to a downstream stage restarted after this one had finished: the
    restarted stage may have lost the EOS with its predecessor's queue, so it is sent once more."""
    runner, downstream = runner_and_downstream
    runner.frame_counts = {"a": 30}  # stream a finished (its EOS went out), b runs
    assert not runner._resend_eos()  # nothing asked: nothing sent
    os.kill(os.getpid(), signal.SIGUSR2)
    assert runner._resend_eos()
    resent = received(downstream)
    assert resent.is_eos and resent.stream_id == "a" and resent.frame_index == 30
    assert not downstream.poll(200)  # only the finished stream


def test_a_filter_passes_the_source_frame_count_on_with_the_eos(runner_and_downstream):
    runner, downstream = runner_and_downstream
    runner._handle([FrameMessage.end_of_stream("a", 17)])
    sent = received(downstream)
    assert sent.is_eos and sent.stream_id == "a" and sent.frame_index == 17 and runner.ended == {"a"}


def _frame_parts(stream_id="a", index=0, **header_changes) -> list:
    parts = FrameMessage(stream_id, index, 0.0, 0.0, {"image": np.zeros((2, 2, 3), np.uint8)}).encode()
    if header_changes:
        header = {**json.loads(bytes(parts[0])), **header_changes}
        parts[0] = json.dumps(header).encode()
    return [bytes(p) for p in parts]


def test_untrusted_input_is_dropped_and_counted_and_the_loop_goes_on(runner_and_downstream):
    """Decode errors, frames and EOS of streams the run does not have, frames the stage refuses: one
    counted drop each, and the good frame behind them still goes through."""
    runner, downstream = runner_and_downstream
    runner.stage.accept = lambda msg: "no thanks" if msg.frame_index == 99 else None
    bad = [[b"[" * 50_000], _frame_parts(buffers=5), _frame_parts(frame_index=True), _frame_parts("ghost"),
           [bytes(FrameMessage.end_of_stream("ghost").encode()[0])], _frame_parts("../../etc"), _frame_parts(index=99)]
    feeder = runner.ctx.socket(zmq.PUSH)
    feeder.connect(runner.cfg.endpoint("passthrough_in").split(":", 1)[1])
    for parts in bad + [_frame_parts("a", 1)]:
        feeder.send_multipart(parts)
    deadline = time.time() + 5
    while (runner.metrics.counts["malformed"] < len(bad) or not downstream.poll(0)) and time.time() < deadline:
        if runner.inp.poll(100):
            runner._handle(runner._receive_batch())
    feeder.close(0)
    assert runner.metrics.counts["malformed"] == len(bad)
    good = received(downstream)
    assert (good.stream_id, good.frame_index) == ("a", 1) and runner.ended == set()  # the ghost EOS ended nothing


def test_live_drops_travel_with_the_next_frame_of_their_stream(tmp_path):
    """Stale frames let go here are counted here (drop=) and carried downstream, so a later stage can
    tell them from frames lost (lost=)."""
    with runner_for(_config(tmp_path, mode="live")) as (runner, downstream):
        runner._handle(runner._take([FrameMessage.decode(_frame_parts("a", i)) for i in range(3)]))
        sent = received(downstream)
        assert sent.frame_index == 2 and sent.meta["dropped_upstream"] == 2
        assert runner.metrics.counts["dropped_stale"] == 2


def test_a_stage_books_its_own_stale_drops_as_drops_not_losses(tmp_path):
    """The soak's unexplained losses: a track or record stage that fell behind let stale frames go
    (drop=) and then its own books saw the gap they left and counted it again as lost=. The gap a
    stage's books see includes its own stale drops; downstream gets each drop once."""
    from pipeline.runtime.books import DROPPED, FrameBooks

    gaps = []
    with runner_for(_config(tmp_path, mode="live")) as (runner, downstream):
        books = FrameBooks()
        runner.stage.process = lambda msg: (gaps.append(books.arrive(msg.stream_id, msg.frame_index,
                                                                      msg.meta.get(DROPPED, 0))), [msg])[1]
        upstream = {0: 0, 1: 0, 2: 0, 3: 0, 6: 2, 7: 2, 9: 3}  # frame -> drops upstream before it (4, 5, 8)
        frames = {i: FrameMessage.decode(_frame_parts("a", i, meta={DROPPED: n})) for i, n in upstream.items()}
        sent = []
        for batch in ([0], [1, 2, 3], [6], [7, 9]):  # here: 1, 2 and 7 stale
            assert runner.out.poll(2000, zmq.POLLOUT)  # live: one message in flight, or it is dropped_full
            runner._handle(runner._take([frames[i] for i in batch]))
            sent.append(received(downstream))
        assert [(g.lost, g.dropped) for g in gaps] == [(0, 0), (0, 2), (0, 2), (0, 2)]
        assert runner.metrics.counts["dropped_stale"] == 3
        assert [(m.frame_index, m.meta[DROPPED]) for m in sent] == [(0, 0), (3, 2), (6, 4), (9, 6)]
        later = FrameBooks()  # the next stage: 9 frames missing of 10, every one a drop, none lost
        assert sum(later.arrive("a", m.frame_index, m.meta[DROPPED]).lost for m in sent) == 0


# ---------------------------------------------------------------- shared memory (live, same host)
def _big_frame(stream_id="a", index=0) -> FrameMessage:
    return FrameMessage(stream_id, index, 0.0, time.time(), {"image": np.full((240, 320, 3), index, np.uint8)})


@pytest.fixture
def live_runner(tmp_path):
    """A live passthrough runner (ipc links); the ring files it and the test wrote go afterwards."""
    with runner_for(_config(tmp_path, mode="live")) as pair:
        yield pair
    frame_store.remove_rings("", os.getpid())


@pytest.mark.skipif(not frame_store.available(), reason="needs /dev/shm (Linux shared memory) on x86")
def test_live_frames_between_stages_of_one_host_go_through_shared_memory(live_runner):
    from pipeline.runtime.frame_store import FrameStoreReader

    runner, downstream = live_runner
    runner._handle(runner._take([_big_frame(index=7)]))
    assert downstream.poll(2000)
    parts = downstream.recv_multipart(copy=False)
    assert len(parts) == 1 and "shared" in json.loads(bytes(parts[0]))["buffers"][0]  # a reference, no bytes
    assert FrameMessage.decode(parts, FrameStoreReader(1 << 26)).image[0, 0, 0] == 7
    assert runner._link_state() == {"shared_memory": True}


@pytest.mark.skipif(not frame_store.available(), reason="needs /dev/shm (Linux shared memory) on x86")
def test_a_frame_whose_slot_was_reused_is_dropped_as_stale_not_malformed(live_runner):
    from pipeline.runtime.frame_store import FrameStore

    runner, downstream = live_runner
    upstream = FrameStore(slots=2)
    try:
        parts = [bytes(p) for p in _big_frame(index=1).encode(upstream)]
        for index in (2, 3):  # the upstream stage wrote two more frames into its two slots
            upstream.share("a", "image", np.zeros((240, 320, 3), np.uint8))
        assert runner._take([runner._decode(parts)]) == []
        assert runner.metrics.counts["dropped_stale"] == 1 and runner.metrics.counts["malformed"] == 0
        fresh, = runner._take([runner._decode([bytes(p) for p in _big_frame(index=4).encode(upstream)])])
        assert fresh.image[0, 0, 0] == 4
        assert fresh.meta["dropped_upstream"] == 1  # the drop is booked with the stream's next frame
    finally:
        upstream.close()


@pytest.mark.skipif(not frame_store.available(), reason="needs /dev/shm (Linux shared memory) on x86")
def test_a_live_stage_reads_only_the_newest_frame_and_checks_it_after_reading(live_runner):
    """Frames queued behind a newer one of their stream are dropped unread (no copy out of shared
    memory); the frame kept is asked about (Stage.accept) once its buffers are read."""
    runner, downstream = live_runner
    upstream = frame_store.FrameStore(slots=8)
    seen = []
    runner.stage.accept = lambda msg: seen.append(msg.image[0, 0, 0]) or (None if msg.frame_index < 3 else "no")
    try:
        queued = [runner._decode([bytes(p) for p in _big_frame(index=i).encode(upstream)]) for i in range(3)]
        kept = runner._take(queued)
        assert [m.frame_index for m in kept] == [2] and seen == [2]
        assert "image" in queued[0].pending  # the others were never read
        assert runner._take([runner._decode([bytes(p) for p in _big_frame(index=3).encode(upstream)])]) == []
        assert runner.metrics.counts["malformed"] == 1 and runner.metrics.counts["dropped_stale"] == 2
    finally:
        upstream.close()


@pytest.mark.skipif(not frame_store.available(), reason="needs /dev/shm (Linux shared memory) on x86")
def test_a_refused_newest_frame_lets_the_one_before_it_in(live_runner):
    runner, downstream = live_runner
    upstream = frame_store.FrameStore(slots=8)
    runner.stage.accept = lambda msg: "no" if msg.frame_index == 2 else None
    try:
        queued = [runner._decode([bytes(p) for p in _big_frame(index=i).encode(upstream)]) for i in range(3)]
        assert [m.frame_index for m in runner._take(queued)] == [1]
        assert runner.metrics.counts["malformed"] == 1 and runner.metrics.counts["dropped_stale"] == 1
    finally:
        upstream.close()


@pytest.mark.skipif(not frame_store.available(), reason="needs /dev/shm (Linux shared memory) on x86")
def test_bad_shared_memory_references_on_a_live_link_are_counted_drops(live_runner):
    """The fuzzer's references, where a live stage of this host would read them (the fuzz run is a
    replay, whose links take no shared memory at all)."""
    from scripts.fuzz import BAD_REFERENCES

    runner, downstream = live_runner
    for index, ref in enumerate(BAD_REFERENCES):
        header = json.loads(bytes(_big_frame(index=index).encode()[0]))
        header["buffers"][0]["shared"] = ref
        msg = runner._decode([json.dumps(header).encode()])
        assert msg is None or runner._take([msg]) == []
    assert runner.metrics.counts["malformed"] == len(BAD_REFERENCES)


def test_replay_sends_the_bytes(runner_and_downstream):
    """Replay must not lose a frame, and a slot cannot wait for a slow reader: no shared memory."""
    runner, downstream = runner_and_downstream
    runner._handle([_big_frame(index=3)])
    assert received(downstream).image[0, 0, 0] == 3 and runner.shared_out is None and runner.shared_in is None


@pytest.mark.skipif(not frame_store.available(), reason="needs /dev/shm (Linux shared memory) on x86")
def test_only_live_links_between_stages_of_this_host_share_memory(tmp_path):
    from pipeline.runtime.stage import shares_memory

    live, replay = _config(tmp_path, mode="live"), _config(tmp_path)
    ipc = live.endpoint("record_in")
    off = _config(tmp_path, mode="live", transport={"ipc_dir": str(tmp_path / "ipc"), "shared_memory": False})
    assert shares_memory(live, ipc, other_host=False)
    assert not shares_memory(live, ipc, other_host=True)  # (a stage on another host cannot map our files)
    assert not shares_memory(live, "pull+bind:tcp://127.0.0.1:5551", other_host=False)
    assert not shares_memory(replay, replay.endpoint("record_in"), other_host=False)  # replay loses nothing
    assert not shares_memory(off, ipc, other_host=False)
