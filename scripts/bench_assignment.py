"""Training-step time with yolox's per-image SimOTA loop vs the batched assignment (models/simota.py).

Both are timed side by side in one run, interleaved, on the same model, batch and labels; the script
prints medians and the ratio. Usage:

    python scripts/bench_assignment.py                                   # CPU, batch 16, 256 px crops
    python scripts/bench_assignment.py --device cuda --batch 64 --crop 320 --amp
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model  # noqa: E402
from models.simota import BatchedSimOTAHead  # noqa: E402
from yolox.models.yolo_head import YoloxHead  # noqa: E402


def random_targets(batch: int, crop: int, per_image: int, generator: torch.Generator) -> torch.Tensor:
    """1..per_image labels per crop, 4-40 px, like the training crops around small targets."""
    targets = torch.zeros(batch, per_image, 5)
    for image in range(batch):
        for row in range(int(torch.randint(1, per_image + 1, (1,), generator=generator))):
            side = 4 + 36 * float(torch.rand(1, generator=generator))
            cx, cy = (crop * torch.rand(2, generator=generator)).tolist()
            targets[image, row] = torch.tensor([float(row % 4), cx, cy, side, side * 0.8])
    return targets


def step_seconds(model, images, targets, device: torch.device, amp: bool) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        loss = model(images, targets)["total_loss"]
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="yolox-nano-gssam-sigres-p1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--labels", type=int, default=3, help="most labels per crop")
    p.add_argument("--steps", type=int, default=10, help="timed steps of each (after 2 warm-ups)")
    p.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=4).to(device)
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(args.batch, 3, args.crop, args.crop, generator=generator) * 255).to(device)
    targets = random_targets(args.batch, args.crop, args.labels, generator).to(device)
    heads = {"yolox loop": YoloxHead, "batched": BatchedSimOTAHead}     # same module, either loss
    times = {name: [] for name in heads}
    for step in range(args.steps + 2):
        for name, head_class in heads.items():
            model.head.__class__ = head_class
            seconds = step_seconds(model, images, targets, device, args.amp)
            model.zero_grad(set_to_none=True)
            if step >= 2:
                times[name].append(seconds)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{args.threads}"
    print(f"{args.model}, batch {args.batch} x {args.crop} px, {label}, median of {args.steps} steps:")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"  {name:10} {median * 1000:8.1f} ms/step  {args.batch / median:8.0f} images/s")
    print(f"  batched is x{medians['yolox loop'] / medians['batched']:.2f} the speed of the yolox loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
