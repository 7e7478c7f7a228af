"""Links from a drone track to its moment in the recording (stages/view/review.py)."""
import json

from stages.view.review import Reviews


def index(folder, *entries) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "segments.jsonl", "a") as f:
        for name, start in entries:
            (folder / name).write_bytes(b"\0")
            f.write(json.dumps({"segment": name, "source_ts": start}) + "\n")


def test_a_link_appears_once_the_recorder_opened_the_segment_and_starts_before_the_moment(tmp_path):
    reviews = Reviews(tmp_path, pre_roll_s=2.0)
    assert reviews.link("cam0", 75.0) is None  # the event comes before its frame reaches the recorder
    index(tmp_path / "cam0", ("segment_00000.mp4", 0.0), ("segment_00001.mp4", 60.0))
    assert reviews.link("cam0", 75.0) == {"url": "recordings/cam0/segment_00001.mp4", "segment": "segment_00001.mp4",
                                          "t": 13.0, "at": 15.0}
    assert reviews.link("cam0", 1.0)["t"] == 0.0  # the pre-roll never reaches before the segment


def test_a_deleted_segment_an_odd_stream_or_a_bad_time_gives_no_link(tmp_path):
    reviews = Reviews(tmp_path)
    index(tmp_path / "cam0", ("segment_00000.mp4", 0.0))
    assert reviews.link("cam0", 5.0) is not None
    (tmp_path / "cam0" / "segment_00000.mp4").unlink()  # retention
    assert reviews.link("cam0", 5.0) is None
    for stream, moment in (("..", 5.0), ("a/b", 5.0), ("", 5.0), (None, 5.0), ("cam0", float("inf")),
                           ("cam0", float("nan")), ("cam0", "5"), ("cam0", None)):
        assert reviews.link(stream, moment) is None, (stream, moment)
