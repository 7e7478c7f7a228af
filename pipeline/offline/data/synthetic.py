"""Deterministic synthetic low-slow-small clips: the demo input, test fixtures and optional training data.

Everything random comes from one ``numpy`` generator seeded by ``seed``, so a seed always gives the
same frames and boxes. A clip has a static background (sky with clouds, and one of ground,
tree line or buildings below a horizon), 3-40 px multi-rotor / fixed-wing drone silhouettes and
flapping birds as distractors on slow smooth (Lissajous) paths, then camera effects: blur,
flicker, sensor noise and H.264 compression. Boxes are the tight bounds of each rendered silhouette.

Outputs of ``make_clip``: ``<name>.mp4``, ``<name>.json`` (COCO, categories = dataset.CLASSES,
category_id = class index + 1) and ``<name>_gt.txt`` (MOTChallenge gt:
``frame(1-based),track_id,x,y,w,h,1,category_id,1``).
``make_dataset`` writes clips in the real dataset's layout (``Video_V/V_DRONE_900.mp4`` +
``labels_V/V_DRONE_900_LABELS.csv``) so ``eval --data`` and tests run without the real data.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import cv2
import numpy as np

from pipeline.offline.data.coco import CocoBuilder, category_id
from pipeline.offline.data.dataset import CLASSES

SUPERSAMPLE = 4          # silhouettes are drawn 4x larger and area-downsampled: anti-aliased sub-pixel shapes
ALPHA_IN_BOX = 0.3       # rendered coverage that counts as part of the object for its box
DRONE_SIZE_PX = (4.0, 38.0)   # drawn longest side; anti-aliasing adds up to ~2 px to the box
BIRD_SIZE_PX = (5.0, 38.0)
DRONE, BIRD = CLASSES.index("drone"), CLASSES.index("bird")


class ClipPaths(NamedTuple):
    video: Path
    coco: Path
    mot_gt: Path


@dataclass(frozen=True)
class Box:
    track_id: int
    class_id: int
    x: float
    y: float
    w: float
    h: float


@dataclass
class _Target:
    track_id: int
    class_id: int
    shape: str            # "multirotor" | "fixedwing" | "bird"
    base_size: float      # longest side in px
    center: np.ndarray    # path centre (x, y)
    amplitude: np.ndarray # path half-extent (x, y)
    omega: np.ndarray     # path angular speed per frame (x, y)
    phase: np.ndarray     # path phase (x, y), size phase
    size_omega: float
    flap_omega: float
    intensity: float      # grey level of the silhouette

    def state(self, t: int) -> tuple[float, float, float, float]:
        """(x, y, size, heading) at frame t; heading follows the velocity."""
        angle = self.omega * t + self.phase[:2]
        x, y = self.center + self.amplitude * np.sin(angle)
        vx, vy = self.amplitude * self.omega * np.cos(angle)
        low, high = DRONE_SIZE_PX if self.class_id == DRONE else BIRD_SIZE_PX
        size = float(np.clip(self.base_size * (1 + 0.25 * math.sin(self.size_omega * t + self.phase[2])), low, high))
        return float(x), float(y), size, math.atan2(vy, vx)


# --- silhouettes: polygons in units of the longest side, centred on (0, 0) ---------------------------------

def _ellipse(cx, cy, ax, ay):
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _bar(x0, y0, x1, y1, half_width):
    direction = np.array([x1 - x0, y1 - y0], dtype=float)
    normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-9) * half_width
    return np.array([[x0, y0], [x1, y1], [x1, y1], [x0, y0]], dtype=float) + np.array([normal, normal, -normal, -normal])


def _silhouette(shape: str, flap: float, heading: float) -> list[np.ndarray]:
    if shape == "multirotor":  # front view: body, arms, rotor discs, legs; tilts slightly with motion
        parts = [_ellipse(0, 0.02, 0.16, 0.08), _bar(-0.4, 0, 0.4, 0, 0.03),
                 _ellipse(-0.4, -0.07, 0.1, 0.025), _ellipse(0.4, -0.07, 0.1, 0.025),
                 _bar(-0.4, 0, -0.4, -0.07, 0.02), _bar(0.4, 0, 0.4, -0.07, 0.02),
                 _bar(-0.1, 0.08, -0.16, 0.2, 0.02), _bar(0.1, 0.08, 0.16, 0.2, 0.02)]
        rotation = 0.15 * math.cos(heading)
    elif shape == "fixedwing":  # seen from below: fuselage, swept wing, tailplane; turns with its heading
        parts = [_ellipse(0, 0, 0.32, 0.045), _bar(0.05, -0.5, 0.05, 0.5, 0.06),
                 _bar(-0.3, -0.15, -0.3, 0.15, 0.035)]
        rotation = heading
    else:  # bird: body, head, two wings whose tips beat up and down
        tip_y = -0.3 * math.sin(flap)
        wing = np.array([[0.04, 0.0], [0.22, 0.6 * tip_y - 0.03], [0.5, tip_y], [0.25, 0.6 * tip_y + 0.03], [-0.04, 0.0]])
        parts = [_ellipse(0, 0.03, 0.16, 0.06), _ellipse(0.17, 0.0, 0.05, 0.045), wing, wing * [-1, 1]]
        rotation = 0.2 * math.sin(heading)
    c, s = math.cos(rotation), math.sin(rotation)
    return [part @ np.array([[c, s], [-s, c]]) for part in parts]


def _render_alpha(shape: str, x: float, y: float, size: float, flap: float, heading: float
                  ) -> tuple[int, int, np.ndarray]:
    """(left, top, coverage in [0, 1]) of a silhouette centred at sub-pixel (x, y)."""
    half = int(math.ceil(size * 0.75)) + 2
    left, top = int(math.floor(x)) - half, int(math.floor(y)) - half
    canvas = np.zeros((2 * half * SUPERSAMPLE, 2 * half * SUPERSAMPLE), np.uint8)
    offset = np.array([x - left, y - top]) * SUPERSAMPLE
    polygons = [np.round(part * size * SUPERSAMPLE + offset).astype(np.int32)
                for part in _silhouette(shape, flap, heading)]
    cv2.fillPoly(canvas, polygons, 255, lineType=cv2.LINE_AA)
    alpha = cv2.resize(canvas, (2 * half, 2 * half), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return left, top, alpha


# --- backgrounds ---------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    coarse = rng.random((max(2, shape[0] // cell + 2), max(2, shape[1] // cell + 2))).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, width: int, height: int, kind: str) -> np.ndarray:
    """BGR float32 background: sky gradient with clouds, and ``kind`` below a horizon."""
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    zenith = np.array([200, 140, 90], np.float32) + rng.uniform(-20, 20, 3)
    horizon_colour = np.array([235, 215, 200], np.float32) + rng.uniform(-15, 15, 3)
    image = np.broadcast_to(zenith + (horizon_colour - zenith) * rows, (height, width, 3)).copy()
    clouds = np.clip((_smooth_noise(rng, (height, width), 48) - rng.uniform(0.45, 0.65)) * 3, 0, 1)
    clouds *= _smooth_noise(rng, (height, width), 24) * 0.4 + 0.6
    image += (np.float32(245) - image) * clouds[..., None] * 0.9
    if kind == "sky":
        return image
    horizon = int(height * rng.uniform(0.7, 0.85))
    texture = _smooth_noise(rng, (height, width), 4)[..., None]
    ground = np.array([70, 110, 95], np.float32) + rng.uniform(-15, 15, 3)
    image[horizon:] = ground * (0.8 + 0.4 * texture[horizon:])
    if kind == "treeline":
        crown = horizon - (8 + 40 * _smooth_noise(rng, (1, width), 24)[0] + 6 * _smooth_noise(rng, (1, width), 3)[0])
        mask = np.arange(height)[:, None] >= crown[None, :]
        image[mask] = (np.array([40, 75, 45], np.float32) * (0.7 + 0.6 * texture))[mask]
    elif kind == "buildings":
        x = 0
        while x < width:
            w = int(rng.uniform(0.05, 0.15) * width)
            top = horizon - int(rng.uniform(0.05, 0.3) * height)
            image[top:horizon, x:x + w] = rng.uniform(90, 170) * np.array([1.0, 1.0, 1.05], np.float32)
            window = np.zeros((horizon - top, min(w, width - x)), bool)
            window[4::9, 3::7] = True
            image[top:horizon, x:x + w][window] *= 0.55
            x += w + int(rng.uniform(0, 0.05) * width)
    return image


@dataclass(frozen=True)
class _Look:
    """How one clip's camera and weather differ from the plain render (``render_clip(varied=True)``):
    the plain clips all share one blue sky, one target contrast and one noise level, and a model
    trained on many of them learns that look (issue 17: more synthetic clips, less generalisation)."""
    sky: str                 # "blue" | "overcast" | "dusk"
    haze: float              # 0..0.5: the scene pulled towards the horizon colour (less contrast)
    contrast: float          # scales every target's difference from the grey it is drawn against
    reverse: bool            # targets brighter than the sky (visible) / colder than it (thermal)
    black_hot: bool          # thermal: warm shown dark
    noise: float             # sensor noise sigma
    blur: float              # optics blur sigma


def _draw_look(rng: np.random.Generator) -> _Look:
    u = rng.random(4)
    return _Look(sky=("blue", "overcast", "dusk")[int(u[0] * 3)], haze=float(rng.uniform(0, 0.5)),
                 contrast=float(np.exp(rng.uniform(np.log(0.3), 0))), reverse=bool(u[1] < 0.2),
                 black_hot=bool(u[2] < 0.3), noise=float(rng.uniform(1, 8)), blur=float(rng.uniform(0.3, 1.4)))


def _restyle_sky(image: np.ndarray, look: _Look, rng: np.random.Generator) -> np.ndarray:
    """The plain blue sky recoloured per the look, then haze."""
    grey = image.mean(axis=2, keepdims=True)
    if look.sky == "overcast":
        image = np.repeat(grey * 0.9 + np.float32(rng.uniform(10, 40)), 3, axis=2)
    elif look.sky == "dusk":
        image = grey * np.array([0.55, 0.75, 1.05], np.float32)
    horizon = image[int(image.shape[0] * 0.6)].mean(axis=0)
    return image + (horizon - image) * np.float32(look.haze)


def _to_thermal(bgr: np.ndarray) -> np.ndarray:
    """Cold sky dark, warm ground bright: a grey-level inversion of the visible brightness."""
    grey = bgr.mean(axis=2, keepdims=True)
    return np.repeat(255 - grey * 0.75, 3, axis=2)


# --- clip ------------------------------------------------------------------------------------------------------

def _composite(image: np.ndarray, left: int, top: int, alpha: np.ndarray, intensity: float
               ) -> tuple[float, float, float, float] | None:
    """Blend a silhouette of grey level ``intensity`` into image in place; its (x, y, w, h) box or None if unseen."""
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + alpha.shape[1], image.shape[1]), min(top + alpha.shape[0], image.shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    visible = alpha[y0 - top:y1 - top, x0 - left:x1 - left]
    region = image[y0:y1, x0:x1]
    region += (np.float32(intensity) - region) * visible[..., None]
    ys, xs = np.nonzero(visible > ALPHA_IN_BOX)
    if not len(xs):
        return None
    return float(x0 + xs.min()), float(y0 + ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)


def _make_targets(rng: np.random.Generator, width: int, height: int, n_drones: int, n_birds: int,
                  modality: str) -> list[_Target]:
    targets = []
    for track_id in range(1, n_drones + n_birds + 1):
        is_drone = track_id <= n_drones
        low, high = DRONE_SIZE_PX if is_drone else BIRD_SIZE_PX
        base_size = float(math.exp(rng.uniform(math.log(low + 1), math.log(high))))
        # the path stays inside the frame (and above the lowest quarter, where the ground usually is)
        low_corner = np.array([min(high * 0.8, width / 4), min(high * 0.8, height / 4)])
        high_corner = np.array([width - low_corner[0], max(low_corner[1] + 1, height * 0.75)])
        amplitude = rng.uniform(0.15, 0.45, 2) * (high_corner - low_corner)
        center = low_corner + amplitude + rng.random(2) * (high_corner - low_corner - 2 * amplitude)
        intensity = rng.uniform(200, 250) if modality == "IR" else rng.uniform(25, 80)
        targets.append(_Target(
            track_id=track_id, class_id=DRONE if is_drone else BIRD,
            shape=str(rng.choice(["multirotor", "multirotor", "fixedwing"])) if is_drone else "bird",
            base_size=base_size, center=center, amplitude=amplitude,
            omega=rng.uniform(0.004, 0.012, 2) * rng.choice([-1, 1], 2),  # a path period of 9-50 s at 30 fps
            phase=rng.uniform(0, 2 * np.pi, 3), size_omega=rng.uniform(0.005, 0.02),
            flap_omega=rng.uniform(0.6, 1.2), intensity=intensity))
    return targets


def _restyle_targets(targets: list[_Target], scene: np.ndarray, look: _Look, modality: str) -> None:
    """Each target's grey level per the look: its contrast against the scene's mean grey scaled (down to
    a faint 0.3x), its polarity reversed in some clips, thermal black-hot flipped with the scene."""
    mean = float(scene.mean())
    for target in targets:
        difference = (target.intensity - mean) * look.contrast
        if look.reverse:
            difference = -difference
        if modality == "IR" and look.black_hot:
            difference = -difference
        # at least 12 grey levels: a target nobody could see is a wrong label, not a hard example
        difference = math.copysign(max(abs(difference), 12.0), difference)
        target.intensity = float(np.clip(mean + difference, 0, 255))


def loose_visible_box(box: tuple[float, float, float, float], rng: np.random.Generator
                      ) -> tuple[float, float, float, float]:
    """(x, y, w, h) as the real visible-camera labels draw an object's tight ``box``: roughly centred
    (±2 px) in a box a few px larger than the object and at least ~18-26 x 15-22 px (dataset README:
    visible drone boxes p10 23 x 19 px). What pipeline.offline.data.tighten is measured and tested against."""
    x, y, w, h = box
    width = max(w + rng.uniform(2, 8), rng.uniform(18, 26))
    height = max(h + rng.uniform(2, 8), rng.uniform(15, 22))
    cx, cy = x + w / 2 + rng.uniform(-2, 2), y + h / 2 + rng.uniform(-2, 2)
    return cx - width / 2, cy - height / 2, width, height


def render_clip(seed: int = 0, frames: int = 300, size: tuple[int, int] = (640, 512), modality: str = "V",
                n_drones: int | None = None, n_birds: int | None = None, background: str | None = None,
                noise_sigma: float = 3.0, blur_sigma: float = 0.6, varied: bool = False
                ) -> Iterator[tuple[np.ndarray, list[Box]]]:
    """(BGR uint8 frame, boxes) per frame, deterministic from ``seed``. ``varied``: a per-clip sky, haze,
    target contrast and polarity, noise and blur (``_Look``) for training; off, every existing seed
    renders exactly as before (the synthetic seed-7 clip, fixtures)."""
    width, height = size
    rng = np.random.default_rng(seed)
    kind = background or str(rng.choice(["sky", "treeline", "buildings", "ground"]))
    n_drones = int(rng.integers(1, 4)) if n_drones is None else n_drones
    n_birds = int(rng.integers(0, 3)) if n_birds is None else n_birds
    scene = _background(rng, width, height, kind)
    look = _draw_look(np.random.default_rng([seed, 1])) if varied else None   # its own stream: same scene
    if look is not None:
        scene = _restyle_sky(scene, look, np.random.default_rng([seed, 2]))
    if modality == "IR":
        scene = _to_thermal(scene)
        if look is not None and look.black_hot:
            scene = 255 - scene
    targets = _make_targets(rng, width, height, n_drones, n_birds, modality)
    if look is not None:
        _restyle_targets(targets, scene, look, modality)
        noise_sigma, blur_sigma = look.noise, look.blur
    noise_bank = [rng.normal(0, noise_sigma, (height, width, 3)).astype(np.float32) for _ in range(4)]
    flicker = rng.uniform(0, 2 * np.pi)
    for t in range(frames):
        image = scene.copy()
        boxes = []
        for target in targets:
            x, y, size_px, heading = target.state(t)
            left, top, alpha = _render_alpha(target.shape, x, y, size_px, target.flap_omega * t, heading)
            box = _composite(image, left, top, alpha, target.intensity)
            if box is not None:
                boxes.append(Box(target.track_id, target.class_id, *box))
        if blur_sigma > 0:
            image = cv2.GaussianBlur(image, (0, 0), blur_sigma)
        image *= 1 + 0.02 * math.sin(0.05 * t + flicker)
        image += noise_bank[int(rng.integers(len(noise_bank)))]
        yield np.clip(image, 0, 255).astype(np.uint8), boxes


def _open_writer(path: Path, width: int, height: int, fps: int, crf: int):
    """PyAV writer: H.264 (libx264) when available, else MPEG-4 part 2 (mp4v)."""
    import av

    container = av.open(str(path), "w")
    if "libx264" in av.codecs_available:
        stream = container.add_stream("libx264", rate=fps)
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
    else:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.bit_rate = 2_000_000
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    return container, stream


def write_video(path: Path, frames: Iterator[np.ndarray], width: int, height: int, fps: int = 30, crf: int = 23) -> int:
    import av

    container, stream = _open_writer(path, width, height, fps, crf)
    count = 0
    try:
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return count


def _render_and_encode(video_path: Path, seed: int, frames: int, size: tuple[int, int], fps: int, crf: int,
                       **render) -> list[list[Box]]:
    boxes_per_frame: list[list[Box]] = []

    def images():
        for image, boxes in render_clip(seed, frames, size, **render):
            boxes_per_frame.append(boxes)
            yield image

    write_video(video_path, images(), size[0], size[1], fps, crf)
    return boxes_per_frame


def make_clip(out_dir: Path | str, seed: int = 0, frames: int = 300, size: tuple[int, int] = (640, 512),
              fps: int = 30, name: str | None = None, modality: str = "V", n_drones: int | None = None,
              n_birds: int | None = None, background: str | None = None, crf: int = 23) -> ClipPaths:
    """Write ``<name>.mp4``, ``<name>.json`` (COCO) and ``<name>_gt.txt`` (MOTChallenge) into out_dir."""
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"size must be even for yuv420p video, got {size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or f"synthetic_{seed:04d}"
    paths = ClipPaths(out_dir / f"{name}.mp4", out_dir / f"{name}.json", out_dir / f"{name}_gt.txt")
    boxes = _render_and_encode(paths.video, seed, frames, size, fps, crf, modality=modality,
                               n_drones=n_drones, n_birds=n_birds, background=background)
    paths.coco.write_text(json.dumps(_coco(name, boxes, size, modality, seed)))
    with open(paths.mot_gt, "w") as f:
        for frame_index, frame_boxes in enumerate(boxes):
            for b in frame_boxes:
                f.write(f"{frame_index + 1},{b.track_id},{b.x:.2f},{b.y:.2f},{b.w:.2f},{b.h:.2f},1,"
                        f"{category_id(b.class_id)},1\n")
    return paths


def _coco(name: str, boxes: list[list[Box]], size: tuple[int, int], modality: str, seed: int) -> dict:
    builder = CocoBuilder(CLASSES)
    for frame_index, frame_boxes in enumerate(boxes):
        image_id = builder.add_image(f"{name}/{frame_index:06d}", size[0], size[1], clip=name,
                                     frame_index=frame_index, modality=modality)
        for b in frame_boxes:
            builder.add_box(image_id, b.class_id, (b.x, b.y, b.w, b.h), track_id=b.track_id)
    return builder.build({"description": f"synthetic clip {name}", "seed": seed})


# The default tiny dataset: (modality, clip class, number, seed). Bird clips contain only birds.
DEFAULT_DATASET = (("V", "drone", 900, 0), ("V", "bird", 901, 1), ("IR", "drone", 902, 2))


def make_dataset(root: Path | str, clips: Sequence[tuple[str, str, int, int]] = DEFAULT_DATASET,
                 frames: int = 60, crf: int = 23, size: tuple[int, int] | None = None, **render) -> list[str]:
    """Write clips in the real dataset's layout under root; returns the clip names.

    Visible clips are 640x512, thermal ones 320x256, like the real cameras, unless ``size`` (w, h)
    names another (a 1920x1080 surveillance camera, say); ``render``: render_clip's options.
    """
    root = Path(root)
    names = []
    for modality, label, number, seed in clips:
        name = f"{modality}_{label.upper()}_{number:03d}"
        clip_size = size or ((640, 512) if modality == "V" else (320, 256))
        counts = {"n_drones": 0, "n_birds": 2} if label == "bird" else {}
        counts.update(render)
        video_dir, labels_dir = root / f"Video_{modality}", root / f"labels_{modality}"
        video_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        boxes = _render_and_encode(video_dir / f"{name}.mp4", seed, frames, clip_size, 30, crf,
                                   modality=modality, **counts)
        with open(labels_dir / f"{name}_LABELS.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["frame", "label", "x", "y", "width", "height"])
            for frame_index, frame_boxes in enumerate(boxes):
                for b in frame_boxes:
                    writer.writerow([frame_index, CLASSES[b.class_id].upper(), f"{b.x:.2f}", f"{b.y:.2f}",
                                     f"{b.w:.2f}", f"{b.h:.2f}"])
        names.append(name)
    return names


def noisy_predictions(ground_truth: dict, seed: int = 0, jitter: float = 0.2, wrong_class: float = 0.15,
                      false_positives: float = 0.4) -> list[dict]:
    """COCO results near a ground truth: jittered boxes, some wrong classes, extra false positives, spread
    scores. Deterministic from ``seed``; for testing and benchmarking metric code without a model."""
    rng = np.random.default_rng(seed)
    category_ids = [c["id"] for c in ground_truth["categories"]]
    sizes = {image["id"]: (image["width"], image["height"]) for image in ground_truth["images"]}
    results = []
    for annotation in ground_truth["annotations"]:
        x, y, w, h = annotation["bbox"]
        category = annotation["category_id"] if rng.random() > wrong_class else int(rng.choice(category_ids))
        results.append({"image_id": annotation["image_id"], "category_id": category,
                        "bbox": [x + rng.normal(0, jitter * w), y + rng.normal(0, jitter * h),
                                 w * rng.uniform(1 - 1.5 * jitter, 1 + 1.5 * jitter), h],
                        "score": float(rng.uniform(0.05, 1))})
        if rng.random() < false_positives:
            width, height = sizes[annotation["image_id"]]
            results.append({"image_id": annotation["image_id"], "category_id": int(rng.choice(category_ids)),
                            "bbox": [rng.uniform(0, width * 0.9), rng.uniform(0, height * 0.9),
                                     rng.uniform(3, 60), rng.uniform(3, 60)], "score": float(rng.uniform(0, 0.6))})
    return results
