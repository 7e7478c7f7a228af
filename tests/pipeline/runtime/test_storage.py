"""pipeline/storage.py: run files on a real full filesystem (a 4 MiB tmpfs) and after cut writes."""
import os

from pipeline.runtime.storage import append_line, open_line_log, replace_file
from tests.conftest import fill_disk


def test_a_cut_last_line_is_trimmed_before_appending(tmp_path):
    log_path = tmp_path / "tracks.jsonl"
    log_path.write_text('{"frame_index": 0}\n{"frame_index": 1}\n{"frame_ind')
    with open_line_log(log_path) as f:
        f.write('{"frame_index": 2}\n')
    assert log_path.read_text() == '{"frame_index": 0}\n{"frame_index": 1}\n{"frame_index": 2}\n'


def test_full_disk_keeps_the_old_status_file_and_reports_instead_of_raising(small_disk):
    status = small_disk / "status.json"
    assert replace_file(status, '{"old": 1}')
    filler = fill_disk(small_disk)
    assert not replace_file(status, '{"new": "' + "x" * 100_000 + '"}')
    assert status.read_text() == '{"old": 1}' and not list(small_disk.glob(".status.json.tmp"))
    fd = os.open(small_disk / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        assert not append_line(fd, '{"type": "track_confirmed"}')
        filler.unlink()
        assert append_line(fd, '{"type": "track_lost"}')
    finally:
        os.close(fd)
    assert (small_disk / "events.jsonl").read_text().splitlines()[-1] == '{"type": "track_lost"}'
    assert replace_file(status, '{"new": 2}') and status.read_text() == '{"new": 2}'


def test_a_line_cut_by_a_full_disk_never_swallows_the_next(small_disk):
    path = small_disk / "events.jsonl"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        assert append_line(fd, '{"n": 1}')
        filler = fill_disk(small_disk, 4096)
        assert not append_line(fd, '{"n": 2, "thumbnail": "' + "x" * 40_000 + '"}')  # a few pages fit, not all
        assert path.stat().st_size > 10, "the disk took none of the long line: nothing was cut"
        filler.unlink()
        assert append_line(fd, '{"n": 3}')
    finally:
        os.close(fd)
    lines = path.read_text().splitlines()
    assert lines[0] == '{"n": 1}' and lines[-1] == '{"n": 3}' and len(lines) == 3  # the cut line stands alone
