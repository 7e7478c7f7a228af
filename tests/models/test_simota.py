"""models/simota.py: the batched SimOTA assignment and loss equal yolox's per-image loop."""
from __future__ import annotations

import pytest
import torch
from yolox.models.yolo_head import YoloxHead

from models import build_model
from models.simota import BatchedSimOTAHead, pairwise_iou_cxcywh, simota_assign

NUM_CLASSES = 4
HEIGHT, WIDTH = 128, 160


def _targets(seed: int) -> torch.Tensor:
    """Six images: dense, single tiny, empty, a label centred off the image, large boxes, mixed classes."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.zeros(6, 7, 5)
    counts = [7, 1, 0, 2, 3, 5]
    for image, count in enumerate(counts):
        for row in range(count):
            side = float(torch.randint(3, 60, (1,), generator=g)) if image != 1 else 4.0
            cx = float(torch.rand(1, generator=g)) * WIDTH
            cy = float(torch.rand(1, generator=g)) * HEIGHT
            aspect = 0.5 + float(torch.rand(1, generator=g))
            cls = float(torch.randint(0, NUM_CLASSES, (1,), generator=g))
            targets[image, row] = torch.tensor([cls, cx, cy, side * aspect, side])
    targets[3, 1, 1:3] = torch.tensor([WIDTH + 30.0, -20.0])   # centre outside: no candidate anchor
    return targets


def _loss_inputs(model_name: str, seed: int, use_l1: bool):
    """The arguments the head hands to get_losses for one forward pass (graph attached)."""
    torch.manual_seed(seed)
    model = build_model(model_name, NUM_CLASSES)
    model.head.use_l1 = use_l1
    with torch.no_grad():   # varied predictions: class and IoU costs both decide (fresh heads score alike)
        for layer in [*model.head.cls_preds, *model.head.obj_preds, *model.head.reg_preds]:
            layer.weight.normal_(0.0, 0.05)
    captured = {}

    def capture(head, *args, **kwargs):
        captured.update(head=head, args=args, kwargs=kwargs)
        return YoloxHead.get_losses(head, *args, **kwargs)

    images = torch.rand(6, 3, HEIGHT, WIDTH) * 255
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BatchedSimOTAHead, "get_losses", capture)
        model(images, _targets(seed))
    return captured["head"], captured["args"], captured["kwargs"]


def test_models_are_built_with_the_batched_head():
    assert type(build_model("yolox-nano-gssam-sigres-p1", NUM_CLASSES).head) is BatchedSimOTAHead


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_assignment_equals_yolox_image_by_image(seed):
    head, args, _ = _loss_inputs("yolox-nano", seed, use_l1=False)
    _, x_shifts, y_shifts, strides, labels, outputs, _ = args
    x_shifts, y_shifts, strides = (torch.cat(v, 1) for v in (x_shifts, y_shifts, strides))
    counts = (labels.sum(2) > 0).sum(1)
    valid = torch.arange(labels.shape[1]) < counts[:, None]
    found = simota_assign(labels[..., 1:5], labels[..., 0], valid, outputs[..., :4], outputs[..., 4:5],
                          outputs[..., 5:], x_shifts[0], y_shifts[0], strides[0])
    assert found.foreground.any()
    for image in range(len(labels)):
        n = int(counts[image])
        if n == 0:
            assert not found.foreground[image].any()
            continue
        classes, fg_mask, ious, label_index, num_fg = head.get_assignments(
            image, n, labels[image, :n, 1:5], labels[image, :n, 0], outputs[image, :, :4], strides,
            x_shifts, y_shifts, outputs[..., 5:], outputs[..., 4:5])
        assert torch.equal(found.foreground[image], fg_mask)
        assert int(found.foreground[image].sum()) == num_fg
        assert torch.equal(found.label_index[image][fg_mask], label_index)
        torch.testing.assert_close(found.iou[image][fg_mask], ious)
        assert not found.iou[image][~fg_mask].any()


@pytest.mark.parametrize("model_name, use_l1", [("yolox-nano", False), ("yolox-nano-gssam-sigres-p1", True)])
def test_losses_and_gradients_equal_yolox(model_name, use_l1):
    head, args, kwargs = _loss_inputs(model_name, seed=5, use_l1=use_l1)
    outputs = args[5]
    ours = BatchedSimOTAHead.get_losses(head, *args, **kwargs)
    theirs = YoloxHead.get_losses(head, *args, **kwargs)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(torch.as_tensor(mine).float(), torch.as_tensor(reference).float())
    assert float(ours[4].detach()) > 0 if use_l1 else ours[4] == 0.0
    watched = [outputs] + ([args[6][0]] if use_l1 else [])
    grads = torch.autograd.grad(ours[0], watched, retain_graph=True)
    reference_grads = torch.autograd.grad(theirs[0], watched)
    for mine, reference in zip(grads, reference_grads):
        torch.testing.assert_close(mine, reference)


def test_a_batch_without_labels_only_pushes_objectness_down():
    head, args, kwargs = _loss_inputs("yolox-nano", seed=0, use_l1=False)
    args = list(args)
    args[4] = torch.zeros(6, 1, 5)
    loss, iou_loss, obj_loss, cls_loss, l1_loss, fg_per_label = BatchedSimOTAHead.get_losses(head, *args, **kwargs)
    assert iou_loss.item() == 0 and cls_loss.item() == 0 and fg_per_label == pytest.approx(1.0)
    assert float(obj_loss) > 0 and torch.isfinite(loss)
    loss.backward()


def test_pairwise_iou_matches_hand_computed_values():
    labels = torch.tensor([[[10.0, 10.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]]])
    predictions = torch.tensor([[[10.0, 10.0, 4.0, 4.0], [11.0, 10.0, 4.0, 4.0], [50.0, 50.0, 4.0, 4.0]]])
    expected = torch.tensor([[[1.0, 12 / 20, 0.0], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(pairwise_iou_cxcywh(labels, predictions), expected)
