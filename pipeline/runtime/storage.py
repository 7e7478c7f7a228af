"""Writing run files so that a full disk or a crash never corrupts them and never stops a live run.

A full disk (ENOSPC, EDQUOT) is reported to the caller (False / ``is_storage_full``), never raised
from here: recordings pause, events are still published, status keeps flowing over ZeroMQ.
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

log = logging.getLogger("pipeline.runtime.storage")
STORAGE_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_storage_full(error: BaseException) -> bool:
    """A full disk or quota, as an OSError or as PyAV's FFmpegError from a muxer (both carry errno)."""
    return getattr(error, "errno", None) in STORAGE_FULL


def append_line(fd: int, line: str) -> bool:
    """Append one line with one write() on an O_APPEND descriptor (whole lines beside other writers).
    False when the disk is full. A line an earlier full disk cut short is ended first (with a newline
    before this one), so a cut line never swallows the next."""
    data = (line + "\n").encode()
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        data = b"\n" + data
    try:
        return os.write(fd, data) == len(data)
    except OSError as error:
        if is_storage_full(error):
            return False
        raise


def replace_file(path: Path, text: str) -> bool:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: readers see the
    old or the new content, never a half-written file. False when the disk is full (the old file stays)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
        return True
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if is_storage_full(error):
            return False
        raise


def open_line_log(path: Path):
    """Open a line log for appending, line-buffered (whole lines survive a crash), first cutting a
    partial last line (a write cut short by a crash or a full disk), so appended lines never follow one."""
    trim_partial_line(path)
    return open(path, "a", buffering=1)


def trim_partial_line(path: Path) -> None:
    """Cut a line log back to its last whole line (truncating needs no free space)."""
    if not path.exists() or not path.stat().st_size:
        return
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        f.seek(end - 1)
        if f.read(1) != b"\n":
            keep = _end_of_last_whole_line(f, end)
            f.truncate(keep)
            log.warning("%s: cut a partial last line (%d bytes)", path, end - keep)


def _end_of_last_whole_line(f, end: int) -> int:
    position = end
    while position > 0:  # scan back in blocks for the last newline
        start = max(0, position - (1 << 16))
        f.seek(start)
        cut = f.read(position - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        position = start
    return 0
