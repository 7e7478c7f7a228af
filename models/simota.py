"""YOLOX's training loss with its SimOTA label assignment done for the whole batch at once.

yolox's ``YoloxHead.get_losses`` assigns labels image by image: a Python loop of dozens of small
kernels per image, several host synchronisations, and a ``torch.cuda.empty_cache()`` per image. On a
GPU that loop, not the network, sets the step rate (2.4-3.4 steps/s per process at batch 64 on an
H200, docs/training.md). ``BatchedSimOTAHead`` computes the same assignment on padded B x G x A
tensors (G = most labels in one image, A = anchors) in one pass, and the same losses from it, with two
host synchronisations per step (the foreground count and the label count). The rules are yolox's, unchanged:

* candidates: anchors whose centre lies within 1.5 strides of a label's centre (per label), and the
  union of those per image;
* cost = class BCE of sqrt(cls * obj) + 3 * -log(IoU) + 1e6 outside the label's own centre region;
* each label takes its dynamic_k = max(1, int(sum of its 10 best IoUs)) cheapest candidates;
* an anchor taken by several labels keeps only the cheapest.

In float32 only ties in cost can make the result differ from yolox's loop (which anchor of two equal
costs is taken); tests/models/test_simota.py checks assignment, losses and gradients against yolox.
Under fp16 autocast the predicted boxes are compared with the labels in float32 here, where yolox
computes their corners in float16 (IoU off by up to ~0.05 for 6-px boxes at 300 px): a deliberate
difference, since those IoUs rank the anchors of tiny targets and set their class targets. A NaN
prediction makes the loss NaN (the training loop skips such a step) instead of failing CUDA's
range check in F.binary_cross_entropy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from yolox.models.yolo_head import YoloxHead

CENTER_RADIUS = 1.5          # yolox: candidate anchors lie within 1.5 strides of a label's centre
CANDIDATES_FOR_K = 10        # yolox: dynamic_k comes from the 10 best IoUs
OUTSIDE_CENTER_COST = 1e6
REG_WEIGHT = 5.0


@dataclass
class Assignment:
    """Per anchor of each image: foreground?, which label, IoU of the prediction with that label."""
    foreground: torch.Tensor        # B x A bool
    label_index: torch.Tensor       # B x A long (meaningful where foreground)
    iou: torch.Tensor               # B x A float (0 where not foreground)


def pairwise_iou_cxcywh(labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """B x G x 4 and B x A x 4 boxes [cx, cy, w, h] -> B x G x A IoU (yolox's bboxes_iou, batched)."""
    a, b = labels[:, :, None], predictions[:, None]
    top_left = torch.max(a[..., :2] - a[..., 2:] / 2, b[..., :2] - b[..., 2:] / 2)
    bottom_right = torch.min(a[..., :2] + a[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2)
    overlaps = (top_left < bottom_right).type(top_left.type()).prod(dim=-1)
    area_i = torch.prod(bottom_right - top_left, -1) * overlaps
    return area_i / (torch.prod(a[..., 2:], -1) + torch.prod(b[..., 2:], -1) - area_i)


def _in_centers(boxes: torch.Tensor, x_shifts: torch.Tensor, y_shifts: torch.Tensor,
                strides: torch.Tensor) -> torch.Tensor:
    """B x G x A: anchor centre within CENTER_RADIUS strides of the label's centre (yolox's arithmetic)."""
    anchor_x = (x_shifts + 0.5) * strides
    anchor_y = (y_shifts + 0.5) * strides
    reach = strides * CENTER_RADIUS
    label_x, label_y = boxes[..., 0:1], boxes[..., 1:2]
    deltas = torch.stack([anchor_x - (label_x - reach), anchor_y - (label_y - reach),
                          (label_x + reach) - anchor_x, (label_y + reach) - anchor_y], -1)
    return deltas.min(dim=-1).values > 0.0


@torch.no_grad()
def simota_assign(boxes: torch.Tensor, classes: torch.Tensor, valid: torch.Tensor, box_preds: torch.Tensor,
                  obj_logits: torch.Tensor, cls_logits: torch.Tensor, x_shifts: torch.Tensor,
                  y_shifts: torch.Tensor, strides: torch.Tensor) -> Assignment:
    """SimOTA for a batch. boxes B x G x 4 [cx, cy, w, h], classes/valid B x G, predictions B x A x .,
    anchor grid x_shifts / y_shifts / strides of length A."""
    num_anchors, num_classes = box_preds.shape[1], cls_logits.shape[-1]
    in_centers = _in_centers(boxes, x_shifts, y_shifts, strides) & valid[..., None]
    candidate = in_centers.any(dim=1, keepdim=True)                              # B x 1 x A
    allowed = candidate & valid[..., None]                                       # B x G x A
    ious = pairwise_iou_cxcywh(boxes, box_preds.float())
    with torch.autocast(box_preds.device.type, enabled=False):
        scores = (cls_logits.float().sigmoid() * obj_logits.float().sigmoid()).sqrt()
        one_hot = F.one_hot(classes.long(), num_classes).float()
        cls_cost = _binary_cross_entropy(scores[:, None], one_hot[:, :, None]).sum(-1)
    cost = cls_cost + 3.0 * -torch.log(ious + 1e-8) + OUTSIDE_CENTER_COST * (~in_centers)
    cost = cost.masked_fill(~allowed, float("inf"))

    top = min(CANDIDATES_FOR_K, num_anchors)
    best_ious = ious.masked_fill(~candidate, 0.0).topk(top, dim=-1).values
    dynamic_k = best_ious.sum(-1).int().clamp(min=1)                              # B x G
    cheapest = cost.topk(top, dim=-1, largest=False).indices                     # B x G x top
    taken = torch.arange(top, device=cost.device) < dynamic_k[..., None]
    matching = torch.zeros_like(cost, dtype=torch.bool).scatter_(-1, cheapest, taken)
    matching &= allowed

    # an anchor taken by several labels keeps the cheapest label
    takers = matching.sum(dim=1)                                                  # B x A
    label_index = torch.where(takers > 1, cost.argmin(dim=1), matching.to(torch.uint8).argmax(dim=1))
    foreground = takers > 0
    iou = ious.gather(1, label_index[:, None]).squeeze(1).masked_fill(~foreground, 0.0)
    return Assignment(foreground=foreground, label_index=label_index, iou=iou)


def _binary_cross_entropy(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.binary_cross_entropy(reduction="none") term for term (logs clamped at -100), broadcasting, and
    letting a NaN through where CUDA's kernel would abort the process."""
    log_p = torch.log(probabilities).clamp(min=-100)
    log_not_p = torch.log1p(-probabilities).clamp(min=-100)
    return (targets - 1) * log_not_p - targets * log_p


class BatchedSimOTAHead(YoloxHead):
    """yolox's head, with ``get_losses`` on the batched assignment (same parameters, same checkpoints)."""

    def get_losses(self, imgs, x_shifts, y_shifts, expanded_strides, labels, outputs, origin_preds, dtype):
        box_preds, obj_logits, cls_logits = outputs[..., :4], outputs[..., 4:5], outputs[..., 5:]
        batch, num_anchors = outputs.shape[:2]
        label_counts = (labels.sum(dim=2) > 0).sum(dim=1)
        valid = torch.arange(labels.shape[1], device=labels.device) < label_counts[:, None]
        boxes, classes = labels[..., 1:5], labels[..., 0]
        x_shifts, y_shifts = torch.cat(x_shifts, 1)[0], torch.cat(y_shifts, 1)[0]
        strides = torch.cat(expanded_strides, 1)[0]
        found = simota_assign(boxes, classes, valid, box_preds, obj_logits, cls_logits, x_shifts, y_shifts, strides)

        fg = found.foreground.reshape(-1).nonzero().squeeze(1)    # host sync 1: the foreground count
        num_fg = max(len(fg), 1)
        row_in_batch = found.label_index + torch.arange(batch, device=labels.device)[:, None] * labels.shape[1]
        matched = row_in_batch.reshape(-1)[fg]
        matched_boxes, matched_classes = boxes.reshape(-1, 4)[matched], classes.reshape(-1)[matched]
        cls_targets = F.one_hot(matched_classes.long(), self.num_classes) * found.iou.reshape(-1)[fg][:, None]

        loss_iou = self.iou_loss(box_preds.reshape(-1, 4)[fg], matched_boxes).sum() / num_fg
        loss_obj = self.bcewithlog_loss(obj_logits.reshape(-1, 1),
                                        found.foreground.reshape(-1, 1).to(dtype)).sum() / num_fg
        loss_cls = self.bcewithlog_loss(cls_logits.reshape(-1, self.num_classes)[fg], cls_targets).sum() / num_fg
        loss_l1 = 0.0
        if self.use_l1:
            anchor = fg % num_anchors
            l1_targets = self.get_l1_target(outputs.new_zeros((len(fg), 4)), matched_boxes, strides[anchor],
                                            x_shifts=x_shifts[anchor], y_shifts=y_shifts[anchor])
            loss_l1 = self.l1_loss(torch.cat(origin_preds, 1).reshape(-1, 4)[fg], l1_targets).sum() / num_fg
        loss = REG_WEIGHT * loss_iou + loss_obj + loss_cls + loss_l1
        num_labels = max(float(label_counts.sum()), 1.0)           # host sync 2
        return loss, REG_WEIGHT * loss_iou, loss_obj, loss_cls, loss_l1, num_fg / num_labels
