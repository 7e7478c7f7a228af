"""The labeled drone-video dataset: clips, CSV labels, frames, COCO conversion, split manifest.

Layout (see the dataset README): ``Video_V/V_<CLASS>_<NNN>.mp4`` + ``labels_V/V_<CLASS>_<NNN>_LABELS.csv``
and the same for ``IR``. Label rows are ``frame,label,x,y,width,height`` with ``frame`` counting from 0
in decode order and (x, y) the top-left corner in pixels.

Write the committed split manifest with ``python -m pipeline.offline.data.dataset --write-split``.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from pipeline.offline.data import coco

log = logging.getLogger(__name__)

CLASSES = ("drone", "bird", "airplane", "helicopter")
MODALITIES = ("V", "IR")
SPLITS = ("train", "val", "test")
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "data" / "drone-detection-dataset"
SPLIT_MANIFEST = REPO_ROOT / "configs" / "splits.json"
DESCRIPTION_XLSX = "Video_dataset_description.xlsx"
SPLIT_SEED = 0
# One period of the split pattern: 8 train, 1 val, 1 test, interleaved so small strata still reach val/test.
SPLIT_PATTERN = ("train",) * 4 + ("val",) + ("train",) * 4 + ("test",)

_CLIP_NAME = re.compile(r"^(V|IR)_([A-Z]+)_(\d+)$")


class DatasetError(Exception):
    """A problem with the dataset that the caller reports as one line."""


class EmptySplitError(DatasetError):
    pass


class LabelError(DatasetError):
    """A label file that cannot be used (unknown class, malformed row)."""


class VideoError(DatasetError):
    """A video that cannot be opened or decoded."""


@dataclass(frozen=True)
class Clip:
    """One labeled clip: this dataset's video + CSV, or a clip read by ``pipeline.offline.data.formats``
    from another label format, whose frames may be an image sequence (``images``) and whose labels are
    already read (``boxes``, in CLASSES indices)."""
    name: str          # e.g. "IR_DRONE_001"
    modality: str      # "V" | "IR"
    label: str         # clip class from the file name, one of CLASSES
    video_path: Path   # the video (for an image sequence: the folder that holds the images)
    labels_path: Path  # the label file (named in errors)
    images: tuple[Path, ...] = ()  # frames as image files, in order, instead of a video
    boxes: dict | None = field(default=None, compare=False, repr=False)  # frame -> [(class, x, y, w, h)]

    @property
    def number(self) -> int:
        return int(self.name.rsplit("_", 1)[1])


category_id = coco.category_id   # COCO category id of a class index; callers know it as dataset.category_id


def coco_categories() -> list[dict]:
    """The COCO categories of the dataset's classes (category id = class index + 1)."""
    return coco.categories(CLASSES)


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset path not found: {root}")
    return root


def find_clips(root: Path | str = DEFAULT_ROOT, modalities: Sequence[str] = MODALITIES) -> list[Clip]:
    """Every clip under ``root`` that has both a video and a label file, sorted by name.

    A clip with only one of the two is skipped with a warning (e.g. V_BIRD_005, whose video is absent).
    """
    root = _check_root(Path(root))
    clips = []
    for modality in modalities:
        videos = {p.stem: p for p in (root / f"Video_{modality}").glob(f"{modality}_*.mp4")}
        labels = {p.name[: -len("_LABELS.csv")]: p for p in (root / f"labels_{modality}").glob("*_LABELS.csv")}
        for name in sorted(videos.keys() | labels.keys()):
            match = _CLIP_NAME.match(name)
            if match is None or match.group(2).lower() not in CLASSES:
                log.warning("skipping %s: name is not <V|IR>_<CLASS>_<NNN> with a known class", name)
                continue
            if name not in videos or name not in labels:
                missing = "video" if name not in videos else "label file"
                log.warning("skipping %s: %s missing", name, missing)
                continue
            clips.append(Clip(name, modality, match.group(2).lower(), videos[name], labels[name]))
    return sorted(clips, key=lambda clip: clip.name)


def read_labels(clip: Clip) -> dict[int, list[tuple[int, float, float, float, float]]]:
    """frame index -> [(class_id, x, y, w, h)]. Raises LabelError on an unknown class or a malformed row."""
    if clip.boxes is not None:  # read by its format's reader
        return {frame: list(rows) for frame, rows in clip.boxes.items()}
    boxes: dict[int, list[tuple[int, float, float, float, float]]] = defaultdict(list)
    try:
        with open(clip.labels_path, newline="") as f:
            for row_number, row in enumerate(csv.DictReader(f), start=2):
                name = (row.get("label") or "").strip().lower()
                if name not in CLASSES:
                    raise LabelError(f"{clip.name}: unknown class name {row.get('label')!r} "
                                     f"at {clip.labels_path.name}:{row_number}")
                try:
                    frame = int(row["frame"])
                    x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
                except (TypeError, ValueError, KeyError) as exc:
                    raise LabelError(f"{clip.name}: malformed row at {clip.labels_path.name}:{row_number} ({exc})") from None
                boxes[frame].append((CLASSES.index(name), x, y, w, h))
    except OSError as exc:
        raise LabelError(f"{clip.name}: cannot read labels: {exc.strerror}: {clip.labels_path}") from None
    return dict(boxes)


@lru_cache(maxsize=4096)
def _video_info(path: Path, mtime_ns: int) -> tuple[int, int, int]:
    """(frames, width, height) from the container's packets, without decoding."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for packet in container.demux(stream) if packet.size)
            return frames, stream.codec_context.width, stream.codec_context.height
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise VideoError(f"{path.name}: cannot open video (corrupt or unsupported): {exc}") from None


def video_info(clip: Clip) -> tuple[int, int, int]:
    """(frame count, width, height) of the clip's video; raises VideoError for an unreadable file."""
    if clip.images:
        return len(clip.images), *_image_size(clip.images[0])
    try:
        mtime_ns = clip.video_path.stat().st_mtime_ns
    except OSError:
        raise VideoError(f"{clip.name}: video missing: {clip.video_path}") from None
    return _video_info(clip.video_path, mtime_ns)


@lru_cache(maxsize=4096)
def _image_size(path: Path) -> tuple[int, int]:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise VideoError(f"{path}: cannot read image (missing, corrupt or unsupported)")
    return image.shape[1], image.shape[0]


def _iter_images(clip: Clip, stride: int, max_frames: int | None) -> Iterator[tuple[int, np.ndarray]]:
    import cv2

    for count, index in enumerate(range(0, len(clip.images), stride)):
        if max_frames is not None and count >= max_frames:
            return
        image = cv2.imread(str(clip.images[index]), cv2.IMREAD_COLOR)
        if image is None:
            raise VideoError(f"{clip.name}: cannot read image {clip.images[index]}")
        yield index, image


def _cache_index(cache_dir: Path | None, clip: Clip) -> tuple[Path | None, set[int] | None]:
    if cache_dir is None:
        return None, None
    clip_dir = Path(cache_dir) / clip.name
    index_path = clip_dir / "frames.json"
    if index_path.is_file():
        return clip_dir, set(json.loads(index_path.read_text())["indices"])
    return clip_dir, None


def _write_atomically(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path``: parallel evaluations share one frame cache, and a reader
    must never see a file another process is still writing."""
    temporary = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")
    write(temporary)
    os.replace(temporary, path)


def iter_frames(clip: Clip, stride: int = 1, cache_dir: Path | str | None = None,
                max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, BGR uint8) for every ``stride``-th frame, in decode order.

    With ``cache_dir`` decoded frames are kept as lossless PNGs under ``cache_dir/<clip>/`` and
    re-read from there when every requested frame is present.
    """
    import cv2

    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if clip.images:  # an image sequence: read directly (a lossless frame cache would only copy it)
        yield from _iter_images(clip, stride, max_frames)
        return
    clip_dir, cached = _cache_index(Path(cache_dir) if cache_dir else None, clip)
    frame_count = video_info(clip)[0] if cached is not None else 0
    wanted = range(0, frame_count, stride)
    if cached is not None and all(i in cached for i in wanted):
        for count, index in enumerate(wanted):
            if max_frames is not None and count >= max_frames:
                return
            yield index, cv2.imread(str(clip_dir / f"{index:06d}.png"), cv2.IMREAD_COLOR)
        return

    capture = cv2.VideoCapture(str(clip.video_path))
    if not capture.isOpened():
        raise VideoError(f"{clip.name}: cannot open video (corrupt or unsupported): {clip.video_path}")
    written = []
    try:
        index = 0
        yielded = 0
        while max_frames is None or yielded < max_frames:
            if index % stride:
                if not capture.grab():  # grab() skips the colour conversion of frames we drop
                    break
            else:
                ok, frame = capture.read()
                if not ok:
                    break
                if clip_dir is not None:
                    clip_dir.mkdir(parents=True, exist_ok=True)
                    _write_atomically(clip_dir / f"{index:06d}.png", lambda tmp: cv2.imwrite(str(tmp), frame))
                    written.append(index)
                yield index, frame
                yielded += 1
            index += 1
        else:
            return  # stopped at max_frames: the cache index would be incomplete
        if clip_dir is not None:
            previous = sorted(cached or ())
            index_text = json.dumps({"indices": sorted(set(previous) | set(written))})
            _write_atomically(clip_dir / "frames.json", lambda tmp: tmp.write_text(index_text))
    finally:
        capture.release()


def _split_manifest(manifest: Path | str | None) -> dict:
    path = Path(manifest) if manifest else SPLIT_MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read split manifest {path}: {exc}") from None


def load_split(split: str, root: Path | str | None = None, modalities: Sequence[str] = MODALITIES,
               manifest: Path | str | None = None) -> list[Clip]:
    """Clips of ``split`` ("train" | "val" | "test" from the committed manifest, or "all" = every clip
    found under root). Raises EmptySplitError when no clip of the split is present."""
    root = Path(root) if root else DEFAULT_ROOT
    if split not in SPLITS + ("all",):
        raise DatasetError(f"unknown split {split!r}; expected one of train, val, test, all")
    clips = find_clips(root, modalities)
    if split != "all":
        names = set(_split_manifest(manifest)["splits"][split])
        found = {clip.name for clip in clips}
        absent = sorted(name for name in names - found if name.split("_", 1)[0] in modalities)
        if absent:
            log.warning("split %s: %d manifest clip(s) not found under %s (e.g. %s)",
                        split, len(absent), root, absent[0])
        clips = [clip for clip in clips if clip.name in names]
    if not clips:
        raise EmptySplitError(f"split {split!r} is empty: no clip of it under {root} "
                              f"(modalities {','.join(modalities)})")
    return clips


def clip_images(clip: Clip, frame_count: int, stride: int = 1) -> list[int]:
    """Frame indices that become COCO images for a clip with ``frame_count`` decoded frames."""
    return list(range(0, frame_count, stride))


def to_coco(clips: Iterable[Clip], stride: int = 1, frame_counts: dict[str, int] | None = None,
            max_frames: int | None = None, labels_of=None) -> dict:
    """COCO ground truth for every ``stride``-th frame of the clips.

    ``frame_counts`` (clip name -> decoded frames) overrides the container's frame count, e.g. for a
    truncated video; label rows beyond the last frame are counted in ``info.labels_beyond_video`` and
    warned about once per clip, never shifted. Images carry ``clip``, ``frame_index``, ``modality``.
    ``labels_of(clip)`` replaces ``read_labels`` (e.g. pipeline.offline.data.tighten.LabelTightener).
    """
    builder = coco.CocoBuilder(CLASSES)
    beyond: dict[str, int] = {}
    for clip in clips:
        frames, width, height = video_info(clip)
        if frame_counts is not None and clip.name in frame_counts:
            frames = frame_counts[clip.name]
        labels = (labels_of or read_labels)(clip)
        _count_labels_beyond(clip, labels, frames, beyond)
        for frame_index in clip_images(clip, frames, stride)[:max_frames]:
            source = {"source": str(clip.images[frame_index])} if clip.images else {}  # for exports
            image_id = builder.add_image(f"{clip.name}/{frame_index:06d}", width, height, clip=clip.name,
                                         frame_index=frame_index, modality=clip.modality, **source)
            for class_id, x, y, w, h in labels.get(frame_index, ()):
                builder.add_box(image_id, class_id, (x, y, w, h))
    return builder.build({"description": "drone-detection-dataset", "stride": stride, "labels_beyond_video": beyond})


def _count_labels_beyond(clip: Clip, labels: dict, frames: int, beyond: dict[str, int]) -> None:
    """Count (into ``beyond``) and warn about label rows outside the video's ``frames`` decoded frames."""
    extra = sorted(f for f in labels if f >= frames or f < 0)
    if extra:
        beyond[clip.name] = sum(len(labels[f]) for f in extra)
        log.warning("%s: %d label row(s) beyond the video's %d decoded frames (first at frame %d); "
                    "ignored, not shifted", clip.name, beyond[clip.name], frames, extra[0])


def read_distance_bins(root: Path | str) -> dict[str, str]:
    """clip name -> distance bin ("close" | "medium" | "distant") from the description spreadsheet, or {}."""
    path = Path(root) / DESCRIPTION_XLSX
    if not path.is_file():
        return {}
    import openpyxl

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    bins = {}
    try:
        rows = workbook.worksheets[0].iter_rows(values_only=True)
        header = [str(cell or "").strip().upper() for cell in next(rows)]
        column = {name: header.index(name) for name in ("SENSOR", "CLASS", "NUMBER")}
        column["BIN"] = next(i for i, name in enumerate(header) if name.startswith("DISTANCE"))
        for row in rows:
            if row[column["SENSOR"]] is None or row[column["NUMBER"]] is None:
                continue
            name = f"{str(row[column['SENSOR']]).strip()}_{str(row[column['CLASS']]).strip()}_{int(row[column['NUMBER']]):03d}"
            bins[name] = str(row[column["BIN"]] or "unknown").strip().lower()
    except (StopIteration, ValueError) as exc:
        log.warning("cannot read distance bins from %s (%s); stratifying without them", path.name, exc)
        return {}
    finally:
        workbook.close()
    return bins


def _stratum(clip: Clip, distance_bins: dict[str, str]) -> str:
    return f"{clip.modality}/{clip.label}/{distance_bins.get(clip.name, 'unknown')}"


def _deal(clips: Sequence[Clip], distance_bins: dict[str, str], seed: int, position: int,
          splits: dict[str, list[str]], counts: dict[str, dict[str, int]]) -> int:
    """Deal clips stratum by stratum through the continuing 8/1/1 pattern from ``position``; returns the
    position after the last clip."""
    strata: dict[str, list[str]] = defaultdict(list)
    for clip in clips:
        strata[_stratum(clip, distance_bins)].append(clip.name)
    for stratum in sorted(strata):
        names = sorted(strata[stratum])
        random.Random(f"{seed}:{stratum}").shuffle(names)
        counts.setdefault(stratum, {name: 0 for name in SPLITS})
        for name in names:
            split = SPLIT_PATTERN[position % len(SPLIT_PATTERN)]
            splits[split].append(name)
            counts[stratum][split] += 1
            position += 1
    return position


def extend_split(manifest: dict, clips: Sequence[Clip], distance_bins: dict[str, str], added_on: str) -> dict:
    """Assign the clips the manifest does not hold yet, never moving an assigned one (the test split
    stays the test split, so earlier numbers stay comparable). The new clips are stratified and dealt
    like make_split's, the 8/1/1 pattern continuing where the manifest's clips left it; the manifest
    records them under ``extensions`` so that the whole of it can be reproduced."""
    assigned = {name for members in manifest["splits"].values() for name in members}
    new = [clip for clip in clips if clip.name not in assigned]
    if not new:
        return manifest
    splits = {name: list(members) for name, members in manifest["splits"].items()}
    counts = {stratum: dict(c) for stratum, c in manifest["strata"].items()}
    _deal(new, distance_bins, manifest["seed"], len(assigned), splits, counts)
    extensions = list(manifest.get("extensions", [])) + [{"added_on": added_on,
                                                          "clips": sorted(c.name for c in new)}]
    return dict(manifest, splits={name: sorted(m) for name, m in splits.items()},
                strata=dict(sorted(counts.items())), extensions=extensions)


def reproduce_split(clips: Sequence[Clip], distance_bins: dict[str, str], committed: dict) -> dict:
    """The manifest make_split and the committed manifest's extensions give for ``clips``."""
    later = {name for ext in committed.get("extensions", []) for name in ext["clips"]}
    manifest = make_split([c for c in clips if c.name not in later], distance_bins, committed["seed"])
    for ext in committed.get("extensions", []):
        wanted = set(ext["clips"])
        assigned = {name for members in manifest["splits"].values() for name in members}
        manifest = extend_split(manifest, [c for c in clips if c.name in wanted | assigned], distance_bins,
                                ext["added_on"])
    return manifest


def make_split(clips: Sequence[Clip], distance_bins: dict[str, str], seed: int = SPLIT_SEED) -> dict:
    """80/10/10 split by clip, stratified by modality x class x distance bin.

    Clips are shuffled within each stratum (seeded per stratum, so adding a stratum does not move
    others) and dealt in turn through one continuing 8/1/1 pattern, which keeps every stratum
    proportional and the overall ratio exact even for strata smaller than ten clips.
    """
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    counts: dict[str, dict[str, int]] = {}
    _deal(clips, distance_bins, seed, 0, splits, counts)
    return {"version": 1, "seed": seed, "ratios": {"train": 0.8, "val": 0.1, "test": 0.1},
            "unit": "clip",
            "stratify_by": ["modality", "class", "distance_bin"] if distance_bins else ["modality", "class"],
            "distance_bins_from": DESCRIPTION_XLSX if distance_bins else None,
            "splits": {name: sorted(members) for name, members in splits.items()},
            "strata": counts}


def write_split(root: Path | str = DEFAULT_ROOT, out: Path | str = SPLIT_MANIFEST, seed: int = SPLIT_SEED) -> dict:
    clips = find_clips(root)
    manifest = make_split(clips, read_distance_bins(root), seed)
    Path(out).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def extend_split_file(root: Path | str = DEFAULT_ROOT, path: Path | str = SPLIT_MANIFEST) -> dict:
    """Add the clips found under root that the manifest at ``path`` lacks (see extend_split)."""
    import datetime

    manifest = _split_manifest(path)
    manifest = extend_split(manifest, find_clips(root), read_distance_bins(root), datetime.date.today().isoformat())
    Path(path).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.offline.data.dataset", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_ROOT), help="dataset root")
    parser.add_argument("--write-split", action="store_true", help="write the split manifest")
    parser.add_argument("--extend-split", action="store_true",
                        help="assign clips new under --data to splits, moving no assigned clip")
    parser.add_argument("--out", default=str(SPLIT_MANIFEST), help="manifest path for --write-split")
    parser.add_argument("--seed", type=int, default=SPLIT_SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.write_split or args.extend_split:
            manifest = (extend_split_file(args.data, args.out) if args.extend_split
                        else write_split(args.data, args.out, args.seed))
            print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v)}" for k, v in manifest["splits"].items()))
        else:
            for split in SPLITS:
                print(split, len(load_split(split, args.data)))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
