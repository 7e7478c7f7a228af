"""pipeline/runtime/status.py: the one-line status, read from untrusted beats."""
from pipeline.runtime.status import format_status


def test_the_status_line_shows_a_link_to_another_host_that_is_down():
    line = format_status({"preprocess": {"fps": 0.0, "downstream_connected": False},
                          "detect": {"fps": 0.0, "senders": 0}, "track": {"fps": 2.0}}, {})
    assert line == "track 2.0fps 0ms | detect 0.0fps 0ms [no sender] | preprocess 0.0fps 0ms [remote down]"
    assert "[" not in format_status({"preprocess": {"downstream_connected": True}, "detect": {"senders": 1}}, {})


def test_the_status_line_shows_how_much_of_each_tiled_stream_was_examined():
    line = format_status({"detect": {"fps": 25.0, "tiling": [["cam", 12, 3.0, 0.25, 5, 0.2, 0.08],
                                                             ["4k", 35, 35.0, 1.0, 1, 1.0, 0.0]]}}, {})
    assert line == "detect 25.0fps 0ms tiles[cam]=25%/5f behind=8% tiles[4k]=100%/1f"
    old_rows = [["cam", 12, 3.0, 0.25, 5]]  # a detect stage of the release before (5 fields)
    assert format_status({"detect": {"fps": 1.0, "tiling": old_rows}}, {}) == "detect 1.0fps 0ms tiles[cam]=25%/5f"
    for forged in ("x", [["cam", "12", 3.0, 0.25, 5]], [[1, 2, 3, 4, 5]], [["cam", 1, 2, True, 4]], [None],
                   [["cam", 1, 1, 1, float("inf")]], [["cam", 1, 1, 1, float("nan")]], [["cam", 1, 1, -1, 1e300]]):
        assert format_status({"detect": {"fps": 1.0, "tiling": forged}}, {}) == "detect 1.0fps 0ms"
