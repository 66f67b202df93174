"""Box IoU / P@0.5 and mask IoU / cIoU / gIoU on hand-computed cases."""
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.ops import box_iou as tv_box_iou

from pixelllm.eval.boxes import boxes_to_original, box_iou, paired_box_iou, precision_at, precision_by_split
from pixelllm.eval.masks import (ciou, giou, mask_box_precision_at, mask_intersection_union, mask_iou,
                                 mask_to_box, refseg_metrics)

SQ = [0, 0, 10, 10]


@pytest.mark.parametrize("a,b,expected", [
    (SQ, [10, 0, 20, 10], 0.0),        # touching along an edge
    (SQ, [10, 10, 20, 20], 0.0),       # touching at a corner
    (SQ, [0, 0, 20, 20], 100 / 400),   # contained
    (SQ, [5, 0, 15, 10], 50 / 150),    # half overlap
    (SQ, SQ, 1.0),                     # identical
    ([5, 5, 5, 10], SQ, 0.0),          # zero-area line inside a box
    ([5, 5, 5, 10], [5, 5, 5, 10], 0.0),  # two identical zero-area boxes: union 0 → 0, not NaN
])
def test_box_iou_edge_cases(a, b, expected):
    assert float(box_iou([a], [b])[0, 0]) == pytest.approx(expected)
    assert float(paired_box_iou([a], [b])[0]) == pytest.approx(expected)


def test_paired_iou_equals_torchvision_diagonal():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 50
    a = torch.cat([xy, xy + torch.rand(20, 2, generator=g) * 30 + 1], 1)
    xy = torch.rand(20, 2, generator=g) * 50
    b = torch.cat([xy, xy + torch.rand(20, 2, generator=g) * 30 + 1], 1)
    torch.testing.assert_close(paired_box_iou(a, b), tv_box_iou(a.double(), b.double()).diagonal())
    assert box_iou(a, b).shape == (20, 20)


def test_precision_at_is_strict():
    gt = [SQ, SQ, SQ]
    pred = [[0, 0, 10, 20],   # IoU 100/200 = 0.5 exactly → miss (strictly greater needed)
            [0, 0, 10, 19],   # 100/190 = 0.526 → hit
            [20, 20, 30, 30]]  # 0 → miss
    assert precision_at(pred, gt, 0.5) == pytest.approx(1 / 3)
    assert precision_at(pred[:1], gt[:1], 0.49) == pytest.approx(1.0)
    assert np.isnan(precision_at(np.zeros((0, 4)), np.zeros((0, 4))))


def test_boxes_to_original_scale_and_clip():
    # original 200 (h) × 400 (w), longest side → 100: resized 50 × 100, scale 0.25
    boxes = [[10, 5, 50, 25], [90, 40, 120, 60]]  # second one reaches into the padding
    expected = [[40, 20, 200, 100], [360, 160, 400, 200]]
    np.testing.assert_allclose(boxes_to_original(boxes, (200, 400), resized_size=(50, 100)), expected)
    np.testing.assert_allclose(boxes_to_original(boxes, (200, 400), scale=0.25), expected)
    # per-box sizes (N×2)
    out = boxes_to_original(boxes, [[200, 400], [100, 100]], resized_size=[[50, 100], [100, 100]], clip=False)
    np.testing.assert_allclose(out, [[40, 20, 200, 100], [90, 40, 120, 60]])
    with pytest.raises(ValueError, match="exactly one"):
        boxes_to_original(boxes, (200, 400))


def test_precision_by_split():
    pred = [SQ, [20, 20, 30, 30], SQ]
    gt = [SQ, SQ, SQ]
    out = precision_by_split(pred, gt, ["testA", "testA", "testB"])
    assert out["testA"] == {"P@0.5": 0.5, "n": 2}
    assert out["testB"] == {"P@0.5": 1.0, "n": 1}
    assert out["all"]["P@0.5"] == pytest.approx(2 / 3) and out["all"]["n"] == 3
    with pytest.raises(ValueError, match="2 split labels for 3 boxes"):
        precision_by_split(pred, gt, ["a", "b"])


def _masks():
    """Expression 1: a 10×10 object found exactly (I 100, U 100, IoU 1).
    Expression 2: a 2×2 object, prediction shifted one row (I 2, U 6, IoU 1/3)."""
    g1 = np.zeros((20, 20), bool); g1[:10, :10] = True
    g2 = np.zeros((20, 20), bool); g2[15:17, 15:17] = True
    p2 = np.zeros((20, 20), bool); p2[16:18, 15:17] = True
    return [g1.copy(), p2], [g1, g2]


def test_ciou_and_giou_differ_as_computed_by_hand():
    preds, gts = _masks()
    assert mask_intersection_union(preds[1], gts[1]) == (2, 6)
    assert ciou(preds, gts) == pytest.approx(102 / 106)       # ΣI / ΣU, dominated by the big object
    assert giou(preds, gts) == pytest.approx((1 + 1 / 3) / 2)  # mean per-expression IoU
    # same numbers from COCO RLE inputs (compressed and uncompressed) and torch tensors
    rle = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in preds]
    assert ciou(rle, [torch.from_numpy(g) for g in gts]) == pytest.approx(102 / 106)
    out = refseg_metrics(preds, gts, ["val", "testA"])
    assert out["val"] == {"cIoU": 1.0, "gIoU": 1.0, "n": 1}
    assert out["testA"]["cIoU"] == pytest.approx(1 / 3)
    assert out["all"]["gIoU"] == pytest.approx(2 / 3)


def test_mask_iou_matches_pycocotools_and_edge_cases():
    rng = np.random.default_rng(0)
    a, b = rng.random((16, 12)) > 0.5, rng.random((16, 12)) > 0.6
    ra, rb = (mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in (a, b))
    assert mask_iou(a, b) == pytest.approx(float(mask_utils.iou([ra], [rb], [0])[0, 0]))
    assert mask_iou(a, b) == pytest.approx((a & b).sum() / (a | b).sum())
    empty = np.zeros((4, 4), bool)
    assert mask_iou(empty, empty) == 1.0
    assert mask_iou(empty, np.ones((4, 4), np.uint8)) == 0.0
    with pytest.raises(ValueError, match=r"giou\[0\].*size"):
        giou([np.zeros((4, 5), bool)], [np.zeros((4, 4), bool)])
    with pytest.raises(ValueError, match="0/1"):
        mask_iou(np.full((4, 4), 0.7), empty)
    with pytest.raises(ValueError, match="1 predicted masks for 2"):
        ciou([empty], [empty, empty])


def test_mask_to_box_and_box_precision():
    m = np.zeros((10, 12), bool); m[2:5, 3:8] = True  # rows 2..4, cols 3..7
    np.testing.assert_allclose(mask_to_box(m), [3, 2, 8, 5])  # exclusive x1 / y1
    np.testing.assert_allclose(mask_to_box(mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))), [3, 2, 8, 5])
    np.testing.assert_allclose(mask_to_box(np.zeros((3, 3))), [0, 0, 0, 0])
    # box of m has IoU 1 with [3,2,8,5]; with [3,2,8,8] it is 15/30 = 0.5 → not > 0.5
    assert mask_box_precision_at([m, m], [[3, 2, 8, 5], [3, 2, 8, 8]]) == pytest.approx(0.5)
