"""MOTChallenge: per sequence ``gt/gt.txt`` (or ``gt.txt``) with lines ``frame, id, x, y, w, h, flag,
class, visibility`` (frame counted from 1; boxes in pixels, top-left corner) beside its frames
(``img1/*.jpg``) or beside one video. A line whose flag is 0 is not to be scored and is left out. MOT
names no classes: a box's class is its class number mapped by ``--classes`` (``1=drone``), and a drone
where the line has no class or the number is not mapped. Each sequence is one clip."""
from __future__ import annotations

from pathlib import Path

from pipeline.offline.data.dataset import CLASSES, Clip
from pipeline.offline.data.formats import ClassMap, FormatError, finite_box, register, sequence_clip

def detect(root: Path) -> bool:
    return bool(_sequences(root))


def _gt_file(folder: Path) -> Path | None:
    for path in (folder / "gt" / "gt.txt", folder / "gt.txt"):
        if path.is_file():
            return path
    return None


def _sequences(root: Path) -> list[Path]:
    if _gt_file(root):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and _gt_file(p)) if root.is_dir() else []


def read(root: Path, classes: ClassMap) -> list:
    return [_read_sequence(folder, classes) for folder in _sequences(root)]


def _read_sequence(folder: Path, classes: ClassMap) -> Clip:
    gt = _gt_file(folder)
    boxes = _read_gt(gt, classes)
    return sequence_clip(folder, folder / "img1", gt, boxes)


def _read_gt(path: Path, classes: ClassMap) -> dict[int, list[tuple]]:
    boxes: dict[int, list[tuple]] = {}
    for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 6:
            raise FormatError(f"{where}: expected 'frame, id, x, y, w, h[, flag, class, visibility]'")
        try:
            frame = int(float(fields[0]))
            box = [float(v) for v in fields[2:6]]
            flag = float(fields[6]) if len(fields) > 6 else 1.0
            number = int(float(fields[7])) if len(fields) > 7 else -1
        except ValueError:
            raise FormatError(f"{where}: not numbers: {line.strip()[:80]!r}") from None
        if frame < 1:
            raise FormatError(f"{where}: MOT frames count from 1, got {frame}")
        if flag == 0:
            continue
        class_id = _class(number, classes, where)
        if class_id is None:
            continue
        finite_box(box, where)
        boxes.setdefault(frame - 1, []).append((class_id, *box))
    return boxes


def _class(number: int, classes: ClassMap, where: str) -> int | None:
    if str(number) in classes.mapping:
        return classes.index(str(number), where)
    return CLASSES.index("drone")


register("mot", detect, read)
