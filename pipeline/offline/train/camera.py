"""Camera effects for training crops: what another camera does to the same scene.

A model trained on two cameras learns their look as much as the objects; a user's camera differs in
palette, noise, optics and processing (issue 17: the shipped model fell to class-agnostic AP50 0.08 on
thermal clips shown through a colour palette). Each crop of a run with ``--camera-effects P`` gets, with
probability P, a random mix of:

- an 8-bit thermal palette applied to its brightness (a visible crop so becomes a thermal-style
  rendering), or white-hot / black-hot inversion, or, for a thermal crop, a visible-style rendering (its
  brightness mapped between a random ground colour and a random sky colour, polarity either way);
- a gain curve (gamma), as another camera's exposure and tone mapping give;
- sensor noise (Gaussian) and fixed-pattern noise (per-column offsets, as uncalibrated microbolometers
  and rolling-shutter CMOS sensors show);
- vignetting (radial fall-off) and defocus blur (3x3 or 5x5 Gaussian);
- JPEG compression at a random quality (15-70), as a streaming encoder's rate control gives; applied
  last, as a camera's encoder would.

Palettes the proxy test camera uses (``HELD_OUT_PALETTES``: inferno, its perceptual siblings magma and
plasma, and hot/autumn, which run through the same black-red-yellow colours) are never drawn, so that a
gain measured on it is generalisation, not memory of its palette. The letterbox padding of crops cut at
a frame edge keeps its grey (the sampler restores it), as at inference.
All draws come from the sampler's numpy generator (one call per crop with effects), noise from a torch
generator seeded by a drawn integer: a resumed run cuts the same crops.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TRAIN_PALETTES = ("jet", "bone", "rainbow", "turbo", "ocean", "pink", "winter", "cool", "viridis", "twilight")
HELD_OUT_PALETTES = ("inferno", "magma", "plasma", "hot", "autumn")
LUMA_BGR = (0.114, 0.587, 0.299)    # BGR -> gray weights (ITU-R BT.601)


def palette_tables(names=TRAIN_PALETTES) -> torch.Tensor:
    """P x 256 x 3 float BGR lookup tables of OpenCV's colormaps."""
    import cv2

    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    tables = [cv2.applyColorMap(ramp, getattr(cv2, f"COLORMAP_{name.upper()}")).reshape(256, 3) for name in names]
    return torch.from_numpy(np.stack(tables).astype(np.float32))


EFFECTS_VERSION = 2   # 1: palette, inversion, noise, vignette, blur; 2: + visible-style, gamma, JPEG, grey padding


def draw_effects(rng: np.random.Generator, palettes: int, thermal: bool = False) -> dict:
    """The random parameters of one crop's camera effects (a fixed number of draws, in a fixed order)."""
    u = rng.random(9)
    colours = rng.uniform(0, 1, 6)     # the visible-style rendering's ground and sky colours
    return {"palette": int(rng.integers(palettes)) if u[0] < 0.4 else -1,
            "invert": bool(0.4 <= u[0] < 0.55),
            "tint": _tint(colours, u[6] < 0.5) if thermal and 0.55 <= u[0] < 0.8 else None,
            "noise": float(rng.uniform(2, 10)) if u[1] < 0.5 else 0.0,
            "stripes": float(rng.uniform(1, 6)) if u[2] < 0.25 else 0.0,
            "vignette": float(rng.uniform(0.2, 0.6)) if u[3] < 0.3 else 0.0,
            "blur": (3, 5)[int(u[5] * 2)] if u[4] < 0.25 else 0,
            "gamma": float(np.exp(rng.uniform(np.log(0.6), np.log(1.6)))) if u[7] < 0.3 else 1.0,
            "jpeg": int(rng.integers(15, 71)) if u[8] < 0.3 else 0,
            "seed": int(rng.integers(2**31))}


def _tint(colours: np.ndarray, dark_sky: bool) -> list[list[float]]:
    """[dark end, bright end] BGR of a visible-style rendering: an earthy ground and a pale sky colour;
    dark_sky swaps them (white-hot thermal: the hot drone on a cold sky becomes a dark drone on a bright one)."""
    ground = [float(20 + 80 * colours[0]), float(30 + 90 * colours[1]), float(30 + 90 * colours[2])]
    sky = [float(170 + 85 * colours[3]), float(150 + 95 * colours[4]), float(120 + 110 * colours[5])]
    return [sky, ground] if dark_sky else [ground, sky]


def apply_effects(image: torch.Tensor, effects: dict, tables: torch.Tensor) -> torch.Tensor:
    """One crop (3 x H x W float 0-255 BGR) as another camera would show it."""
    image = _recolour(image, effects, tables)
    if effects.get("gamma", 1.0) != 1.0:
        image = 255 * (image.clamp(0, 255) / 255) ** effects["gamma"]
    if effects["blur"]:
        image = _blur(image, effects["blur"])
    if effects["vignette"]:
        image = image * _vignette(image.shape[1:], effects["vignette"], image.device)
    if effects["noise"] or effects["stripes"]:
        generator = torch.Generator().manual_seed(effects["seed"])
        height, width = image.shape[1:]
        noise = torch.randn((1, height, width), generator=generator) * effects["noise"]
        noise = noise + torch.randn((1, 1, width), generator=generator) * effects["stripes"]
        image = image + noise.to(image.device)
    image = image.clamp(0, 255)
    return _jpeg(image, effects["jpeg"]) if effects.get("jpeg") else image


def _recolour(image: torch.Tensor, effects: dict, tables: torch.Tensor) -> torch.Tensor:
    """Palette, inversion or visible-style tint of the crop's brightness (or the crop unchanged)."""
    if effects["palette"] < 0 and not effects["invert"] and not effects.get("tint"):
        return image
    luma = (image * torch.tensor(LUMA_BGR, device=image.device).view(3, 1, 1)).sum(0)
    if effects["invert"]:
        return (255 - luma).expand(3, -1, -1)
    if effects.get("tint"):
        dark, bright = (torch.tensor(c, dtype=image.dtype, device=image.device).view(3, 1, 1) for c in effects["tint"])
        return dark + (bright - dark) * (luma / 255).clamp(0, 1)
    index = luma.clamp(0, 255).round().long()
    return tables[effects["palette"]].to(image.device)[index].permute(2, 0, 1)


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """The crop through a JPEG encoder and back (OpenCV, on the host)."""
    import cv2

    pixels = np.ascontiguousarray(image.round().byte().permute(1, 2, 0).cpu().numpy())
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:   # cannot happen for a 3-channel uint8 image; keep the crop rather than fail a step
        return image
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return torch.from_numpy(decoded).permute(2, 0, 1).float().to(image.device)


def _blur(image: torch.Tensor, size: int) -> torch.Tensor:
    sigma = size / 4
    offsets = torch.arange(size, dtype=torch.float32, device=image.device) - size // 2
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = (kernel[:, None] * kernel[None, :]) / kernel.sum() ** 2
    weight = kernel.expand(3, 1, size, size)
    padded = F.pad(image[None], [size // 2] * 4, mode="replicate")
    return F.conv2d(padded, weight, groups=3)[0]


def _vignette(shape, strength: float, device) -> torch.Tensor:
    height, width = shape
    y = torch.linspace(-1, 1, height, device=device).view(-1, 1)
    x = torch.linspace(-1, 1, width, device=device).view(1, -1)
    return (1 - strength * (x ** 2 + y ** 2) / 2).clamp(min=0)
