"""A stand-in for footage of a camera no model here has seen: this dataset's thermal clips as a
640×512 thermal camera that outputs an 8-bit colour palette (ironbow-like "inferno"), written as a YOLO
folder (images/<clip>/NNNNNN.jpg, labels/<clip>/NNNNNN.txt, data.yaml with its own class names).

No second drone dataset can be had on this machine; this is what `python -m pipeline adapt` and the
cross-camera numbers in docs/generalisation.md are measured on. The scenes are real (clips of one split
only, so a proxy built from val clips never shares a scene with one built from test clips); what is new
to the model is the picture: a colour palette, twice the pixels, sensor noise and JPEG.

    python scripts/make_camera_proxy.py --split val --max-clips 10 --out out/proxy/adapt
    python scripts/make_camera_proxy.py --split test --out out/proxy/test
    # a recipe is tuned on val scenes split in two (another palette), never on the test proxy:
    python scripts/make_camera_proxy.py --split val --max-clips 7 --palette hot --out out/proxy/tune-adapt
    python scripts/make_camera_proxy.py --split val --skip 7 --palette hot --out out/proxy/tune-test
    # a second stand-in, of the other camera: the visible clips as another daylight camera would
    # show them (a warm colour cast, washed-out colours, haze, twice the pixels, noise, JPEG)
    python scripts/make_camera_proxy.py --modality V --split test --out out/proxy/test-visible
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.offline.data import dataset  # noqa: E402

NAMES = ("uav", "bird", "plane", "heli")        # the proxy camera's own names: adapt maps them with --classes
CLASS_MAP = "uav=drone,plane=airplane,heli=helicopter"
# only palettes training never draws (pipeline/offline/train/camera.py, HELD_OUT_PALETTES)
PALETTES = {"inferno": cv2.COLORMAP_INFERNO, "magma": cv2.COLORMAP_MAGMA, "hot": cv2.COLORMAP_HOT}


def render(frame: np.ndarray, palette: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    """A thermal frame as the proxy camera shows it: upscaled, noisy, colour-mapped."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    grey += rng.normal(0, 3.0, grey.shape)
    return cv2.applyColorMap(np.clip(grey, 0, 255).astype(np.uint8), palette)


# what no training augmentation draws (pipeline/offline/train/camera.py): a colour cast, desaturation, haze
WARM_CAST = np.array([0.80, 1.0, 1.18], dtype=np.float32)     # B, G, R gains: a white balance set for shade
SATURATION, HAZE = 0.55, 0.30


def render_visible(frame: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """A visible frame as another daylight camera shows it: upscaled, cast warm, washed out, hazy, noisy."""
    picture = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    grey = picture.mean(axis=2, keepdims=True)
    picture = grey + SATURATION * (picture - grey)
    picture = (1 - HAZE) * picture * WARM_CAST + HAZE * 200.0
    picture += rng.normal(0, 3.0, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8)


def _tightened(frame: np.ndarray, boxes: list) -> list:
    """(class, x, y, w, h) rows with each box shrunk to the object it holds (pipeline.offline.data.tighten)."""
    from pipeline.offline.data.tighten import tighten_box

    return [(row[0], *tighten_box(frame, tuple(row[1:]))[0]) for row in boxes]


def write_clip(clip: dataset.Clip, out: Path, stride: int, palette: int | None, scale: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    labels = dataset.read_labels(clip)
    (out / "images" / clip.name).mkdir(parents=True, exist_ok=True)
    (out / "labels" / clip.name).mkdir(parents=True, exist_ok=True)
    written = 0
    for index, frame in dataset.iter_frames(clip, stride=stride):
        boxes = labels.get(index, [])
        if palette is None and boxes:    # the visible camera's loose boxes, tightened as eval --visible-boxes tight does
            boxes = _tightened(frame, boxes)
        picture = render_visible(frame, scale, rng) if palette is None else render(frame, palette, scale, rng)
        height, width = picture.shape[:2]
        quality = 90 if palette is not None else 60          # (a daylight stream is compressed harder)
        cv2.imwrite(str(out / "images" / clip.name / f"{index:06d}.jpg"), picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
        rows = [f"{c} {(x + w / 2) * scale / width:.6f} {(y + h / 2) * scale / height:.6f} "
                f"{w * scale / width:.6f} {h * scale / height:.6f}\n" for c, x, y, w, h in boxes]
        (out / "labels" / clip.name / f"{index:06d}.txt").write_text("".join(rows))
        written += 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=dataset.SPLITS, required=True)
    parser.add_argument("--label", default="drone", help="clips of this class (their other boxes come along)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N clips (a second, disjoint set)")
    parser.add_argument("--max-clips", type=int)
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--modality", choices=("IR", "V"), default="IR", help="IR: the thermal clips through a "
                        "palette; V: the visible clips as another daylight camera")
    parser.add_argument("--palette", choices=PALETTES, default="inferno", help="(IR only)")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    clips = [c for c in dataset.load_split(args.split, modalities=(args.modality,)) if c.label == args.label]
    clips = clips[args.skip:][:args.max_clips]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data.yaml").write_text("names: [" + ", ".join(NAMES) + "]\n")
    for number, clip in enumerate(clips):
        palette = PALETTES[args.palette] if args.modality == "IR" else None
        frames = write_clip(clip, args.out, args.stride, palette, args.scale, seed=number)
        print(f"{clip.name}: {frames} frames")
    print(f"{len(clips)} clips in {args.out} (YOLO; map classes with --classes {CLASS_MAP})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
