"""pipeline/runtime/books.py: a gap in a stream's frame indices is split into frames the live policy
dropped upstream (counted there, carried in the frames) and frames lost."""
from pipeline.runtime.books import DROPPED, FrameBooks, Gap, stamp
from pipeline.runtime.records import last_record
from pipeline.runtime.supervisor import StageProcess


def test_a_gap_is_dropped_as_far_as_upstream_says_and_lost_beyond():
    books = FrameBooks()
    assert books.arrive("a", 0, 0) == Gap()
    assert books.arrive("a", 4, 3) == Gap(lost=0, dropped=3)  # three frames let go on purpose
    assert books.arrive("a", 8, 4) == Gap(lost=2, dropped=1)  # one more dropped, two lost
    assert books.arrive("b", 5, 9) == Gap()  # streams are booked apart; a first frame has no gap
    assert books.arrive("a", 9, 4) == Gap()


def test_a_restarted_upstream_stage_counting_from_0_again_is_no_loss():
    books = FrameBooks()
    books.arrive("a", 0, 50)
    assert books.arrive("a", 3, 2) == Gap(dropped=2)  # the restarted stage dropped 2: not lost


def test_a_resumed_stream_counts_from_where_its_predecessor_stopped():
    books = FrameBooks()
    books.resume("a", 9)
    assert books.arrive("a", 12, 0) == Gap(lost=2)


def test_each_stage_adds_its_own_drops_to_what_the_frame_carries():
    meta = {}
    stamp(meta, 2)
    stamp(meta, 5)
    assert meta[DROPPED] == 7


def test_the_last_record_is_found_from_the_tail(tmp_path):
    path = tmp_path / "tracks.jsonl"
    assert last_record(path) is None
    lines = [f'{{"frame_index": {i}, "detections": []}}' for i in range(5000)]
    path.write_text("\n".join(lines) + '\n{"frame_index": 50')  # the last line was cut by a kill
    assert last_record(path)["frame_index"] == 4999


def test_counters_of_a_restarted_process_stay_in_the_books():
    sp = StageProcess("record", [])
    sp.last_beat = {"stage": "record", "pid": 5, "received": 10, "frames_missing": 1, "fps": 30.0,
                    "latency_ms_p50": 12.0, "next_frame": 40, "state": "running"}
    sp.carry_counters()
    assert sp.last_beat["next_frame"] == 40 and "received" not in sp.last_beat  # where to resume stays
    sp.last_beat = {"stage": "record", "pid": 6, "received": 3, "fps": 29.0, "state": "running"}
    beat = sp.counted_beat()
    assert beat["received"] == 13 and beat["frames_missing"] == 1 and beat["fps"] == 29.0 and beat["pid"] == 6
