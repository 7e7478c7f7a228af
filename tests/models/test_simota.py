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
    """Seven images: dense, single tiny, empty, a label centred off the image beside another, large
    boxes, mixed classes, and a label far off the image alone (no candidate anchor in its image)."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.zeros(7, 7, 5)
    counts = [7, 1, 0, 2, 3, 5, 1]
    for image, count in enumerate(counts):
        for row in range(count):
            side = float(torch.randint(3, 60, (1,), generator=g)) if image != 1 else 4.0
            cx = float(torch.rand(1, generator=g)) * WIDTH
            cy = float(torch.rand(1, generator=g)) * HEIGHT
            aspect = 0.5 + float(torch.rand(1, generator=g))
            cls = float(torch.randint(0, NUM_CLASSES, (1,), generator=g))
            targets[image, row] = torch.tensor([cls, cx, cy, side * aspect, side])
    targets[3, 1, 1:3] = torch.tensor([WIDTH + 30.0, -20.0])   # centre off the image, one anchor in reach
    targets[6, 0, 1:3] = torch.tensor([-70.0, HEIGHT + 70.0])  # beyond every anchor's reach: no candidate
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

    images = torch.rand(7, 3, HEIGHT, WIDTH) * 255
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
    _assert_assignment_equals_yolox(head, labels, outputs, *(torch.cat(v, 1) for v in (x_shifts, y_shifts, strides)))


def test_assignment_equals_yolox_when_a_label_takes_anchors_outside_its_centre():
    """Label B is centred off the image (2 anchors within its reach) and every prediction is B's box:
    its dynamic_k is 10, so it takes 8 candidates of label A at cost 1e6+. Image 1: one label near the
    origin, padding rows after it."""
    head, args, _ = _loss_inputs("yolox-nano", 0, use_l1=False)
    _, x_shifts, y_shifts, strides, _, outputs, _ = args
    outputs = outputs.detach()[:2].clone()
    labels = torch.zeros(2, 4, 5)
    labels[0, :2] = torch.tensor([[1.0, 80.0, 64.0, 150.0, 120.0], [2.0, -10.0, -10.0, 60.0, 50.0]])
    labels[1, 0] = torch.tensor([0.0, 9.0, 7.0, 6.0, 5.0])
    outputs[..., :4] = torch.tensor([-10.0, -10.0, 60.0, 50.0])
    # objectness 0, -1, -2, ... over each image's candidates: costs ~0.5 apart, well above float32's
    # 0.0625 steps at 1e6, so no two candidates tie
    outputs[..., 4] = -30.0
    for image, count in enumerate((2, 1)):
        candidates, _ = head.get_geometry_constraint(labels[image, :count, 1:5], torch.cat(strides, 1),
                                                     torch.cat(x_shifts, 1), torch.cat(y_shifts, 1))
        order = torch.randperm(int(candidates.sum()), generator=torch.Generator().manual_seed(image))
        outputs[image, candidates, 4] = -order.float()
    found = _assert_assignment_equals_yolox(head, labels, outputs,
                                            *(torch.cat(v, 1) for v in (x_shifts, y_shifts, strides)))
    # B keeps most of its 10 (a conflict can hand one to A), far more than the 2 anchors in its reach
    assert int((found.label_index[0][found.foreground[0]] == 1).sum()) >= 8


def _assert_assignment_equals_yolox(head, labels, outputs, x_shifts, y_shifts, strides):
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
    return found


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
    args[4] = torch.zeros(7, 1, 5)
    loss, iou_loss, obj_loss, cls_loss, l1_loss, fg_per_label = BatchedSimOTAHead.get_losses(head, *args, **kwargs)
    assert iou_loss.detach().item() == 0 and cls_loss.detach().item() == 0 and fg_per_label == pytest.approx(1.0)
    assert obj_loss.detach().item() > 0 and torch.isfinite(loss)
    loss.backward()


def test_pairwise_iou_matches_hand_computed_values():
    labels = torch.tensor([[[10.0, 10.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]]])
    predictions = torch.tensor([[[10.0, 10.0, 4.0, 4.0], [11.0, 10.0, 4.0, 4.0], [50.0, 50.0, 4.0, 4.0]]])
    expected = torch.tensor([[[1.0, 12 / 20, 0.0], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(pairwise_iou_cxcywh(labels, predictions), expected)
