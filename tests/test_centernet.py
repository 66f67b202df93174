"""CenterNet proposals: targets, focal loss, decode round trip, overfitting one image, proposal matching."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from pixelllm.modeling.centernet import (CenterNetHead, CenterNetProposer, SimpleFeaturePyramid, centernet_loss,
                                         centernet_targets, decode_detections, gaussian_radius,
                                         heatmap_focal_loss, match_proposals)

torch.set_num_threads(1)


def _outputs_from_targets(t: dict, eps: float = 1e-6) -> dict:
    """A 'perfect' head output: heatmap = logit of the target, size/offset written at the centre cells."""
    b, _, h, w = t["heatmap"].shape
    size = torch.zeros(b, 2, h * w)
    off = torch.zeros(b, 2, h * w)
    for i in range(b):
        idx = t["index"][i][t["mask"][i]]
        size[i][:, idx] = t["size"][i][t["mask"][i]].T
        off[i][:, idx] = t["offset"][i][t["mask"][i]].T
    return {"heatmap": torch.logit(t["heatmap"].clamp(eps, 1 - eps)),
            "size": size.view(b, 2, h, w), "offset": off.view(b, 2, h, w)}


def _sorted(boxes: torch.Tensor) -> torch.Tensor:
    return boxes[torch.argsort(boxes[:, 0] * 1000 + boxes[:, 1])]


def test_simple_feature_pyramid_strides():
    sfp = SimpleFeaturePyramid(in_dim=32, out_dim=24, scale_factors=(4.0, 2.0, 1.0, 0.5))
    outs = sfp(torch.randn(2, 32, 8, 8))
    assert [tuple(o.shape) for o in outs] == [(2, 24, 32, 32), (2, 24, 16, 16), (2, 24, 8, 8), (2, 24, 4, 4)]
    with pytest.raises(ValueError, match="scale factor"):
        SimpleFeaturePyramid(8, 8, (3.0,))
    head = CenterNetHead(24)
    o = head(outs[1])
    assert {k: tuple(v.shape) for k, v in o.items()} == {"heatmap": (2, 1, 16, 16), "size": (2, 2, 16, 16),
                                                          "offset": (2, 2, 16, 16)}
    assert torch.allclose(head.heatmap[-1].bias, torch.tensor([-math.log(9.0)]))  # prior 0.1 → −2.197
    assert len(head(outs)) == 4


def test_gaussian_radius_hand_value():
    # h = 4, w = 8, o = 0.7: the third case is the smallest, r3 = (−16.8 + √(16.8² + 4·2.8·9.6)) / 2
    r3 = (-16.8 + math.sqrt(16.8 ** 2 + 4 * 2.8 * 9.6)) / 2
    assert gaussian_radius(4, 8, 0.7) == pytest.approx(r3)
    assert r3 == pytest.approx(1.4711, abs=1e-4)


def test_heatmap_target_peaks_at_centres_with_gaussian_falloff():
    # stride 4 on a 16×16 grid; box in cells (2, 2, 10, 6): centre (6, 4), size (8, 4), radius ⌊1.47⌋ = 1
    t = centernet_targets([torch.tensor([[8.0, 8.0, 40.0, 24.0], [9.0, 40.0, 31.0, 57.0]])], (16, 16), 4)
    hm = t["heatmap"][0, 0]
    assert hm[4, 6] == 1.0 and t["index"][0, 0] == 4 * 16 + 6
    assert torch.equal(t["size"][0, 0], torch.tensor([8.0, 4.0]))
    assert torch.equal(t["offset"][0, 0], torch.tensor([0.0, 0.0]))
    sigma = 3 / 6                                               # (2r + 1) / 6 with r = 1
    assert hm[4, 7].item() == pytest.approx(math.exp(-1 / (2 * sigma ** 2)))
    assert hm[5, 7].item() == pytest.approx(math.exp(-2 / (2 * sigma ** 2)))
    assert hm[4, 8] == 0 and hm[2, 6] == 0                      # truncated at |dx|, |dy| > r
    # second box: cells (2.25, 10, 7.75, 14.25) → centre (5, 12.125), peak (5, 12), offset (0, 0.125)
    assert hm[12, 5] == 1.0
    assert torch.allclose(t["offset"][0, 1], torch.tensor([0.0, 0.125]))
    assert torch.allclose(t["size"][0, 1], torch.tensor([5.5, 4.25]))
    assert int((hm == 1).sum()) == 2 and t["mask"].all()


def test_targets_skip_degenerate_and_reject_bad_shapes():
    t = centernet_targets([torch.tensor([[5.0, 5.0, 5.0, 20.0], [0.0, 0.0, 16.0, 16.0]]), torch.zeros(0, 4)],
                          (8, 8), 4)
    assert t["num_skipped"] == 1
    assert t["mask"].tolist() == [[False, True], [False, False]]
    assert t["heatmap"][1].sum() == 0
    with pytest.raises(ValueError, match=r"gt_boxes\[0\]"):
        centernet_targets([torch.zeros(2, 5)], (8, 8), 4)


def test_decode_round_trip_recovers_gt_boxes():
    gt = [torch.tensor([[8.0, 8.0, 40.0, 24.0], [9.0, 40.0, 31.0, 57.0], [44.5, 30.0, 64.0, 64.0]]),
          torch.tensor([[0.0, 0.0, 12.0, 20.0], [33.3, 21.7, 50.1, 47.9]])]
    t = centernet_targets(gt, (16, 16), 4)
    dets = decode_detections(_outputs_from_targets(t), stride=4, k=20, score_thr=0.5)
    for d, g in zip(dets, gt):
        assert len(d["boxes"]) == len(g)
        assert torch.allclose(_sorted(d["boxes"]), _sorted(g), atol=1e-4)
        assert (d["scores"] > 0.99).all() and (d["labels"] == 0).all()
    # the size regression of these outputs is exact
    assert centernet_loss(_outputs_from_targets(t), t)["size"].item() == pytest.approx(0.0, abs=1e-6)


def test_decode_nms_threshold_clip_and_max_det():
    hm = torch.full((1, 1, 8, 8), -10.0)
    hm[0, 0, 2, 2], hm[0, 0, 2, 4], hm[0, 0, 6, 6] = 3.0, 2.0, -1.0   # scores .95, .88, .27
    size = torch.zeros(1, 2, 8, 8)
    size[0, :, 2, 2] = size[0, :, 2, 4] = 4.0                         # two 16-px boxes 8 px apart
    size[0, :, 6, 6] = 6.0
    out = {"heatmap": hm, "size": size, "offset": torch.zeros(1, 2, 8, 8)}
    d = decode_detections(out, stride=4, nms_iou=0.3, score_thr=0.05)[0]
    assert len(d["boxes"]) == 2                                       # IoU(1st, 2nd) = 1/3 > 0.3 → suppressed
    assert torch.allclose(d["boxes"][0], torch.tensor([0.0, 0.0, 16.0, 16.0]))
    assert d["scores"][0] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert len(decode_detections(out, stride=4, nms_iou=0.5)[0]["boxes"]) == 3
    assert len(decode_detections(out, stride=4, score_thr=0.5, nms_iou=0.9)[0]["boxes"]) == 2
    assert len(decode_detections(out, stride=4, max_det=1)[0]["boxes"]) == 1
    clipped = decode_detections(out, stride=4, image_sizes=torch.tensor([[30, 28]]))[0]["boxes"]
    assert clipped[:, 2].max() <= 28 and clipped[:, 3].max() <= 30


def test_focal_loss_hand_value_perfect_and_wrong():
    # one peak (target 1) and one cell at target 0.5, logits 0 (p = 0.5):
    # pos: (1 − .5)^2 log .5; neg: (1 − .5)^4 · .5^2 · log .5; N = 1
    loss = heatmap_focal_loss(torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.5]]]]))
    assert loss.item() == pytest.approx((0.25 + 0.0625 * 0.25) * math.log(2), rel=1e-6)
    t = centernet_targets([torch.tensor([[8.0, 8.0, 40.0, 24.0]])], (16, 16), 4)["heatmap"]
    perfect = torch.where(t == 1, 30.0, -30.0)
    assert heatmap_focal_loss(perfect, t).item() < 1e-8
    assert heatmap_focal_loss(torch.zeros_like(t), t).item() > 0.1
    assert heatmap_focal_loss(-perfect, t).item() > 10
    # no objects: normalised by 1, only the negative term
    assert heatmap_focal_loss(torch.full((1, 1, 2, 2), -30.0), torch.zeros(1, 1, 2, 2)).item() < 1e-8


def test_regression_losses_hand_value():
    t = centernet_targets([torch.tensor([[8.0, 8.0, 40.0, 24.0]])], (16, 16), 4)  # size (8, 4), offset (0, 0)
    out = {"heatmap": torch.zeros(1, 1, 16, 16), "size": torch.ones(1, 2, 16, 16),
           "offset": torch.full((1, 2, 16, 16), 0.25)}
    loss = centernet_loss(out, t)
    assert loss["size"].item() == pytest.approx((7 + 3) / 2)
    assert loss["offset"].item() == pytest.approx(0.25)
    assert loss["loss"].item() == pytest.approx(loss["heatmap"].item() + 0.1 * 5 + 0.25, rel=1e-6)


def test_overfit_one_image_recovers_its_boxes():
    torch.manual_seed(0)
    gt = torch.tensor([[8.0, 8.0, 28.0, 24.0], [36.0, 10.0, 60.0, 40.0], [12.0, 36.0, 40.0, 58.0]])
    image = torch.zeros(1, 3, 64, 64)
    for (x0, y0, x1, y1), c in zip(gt.int().tolist(), range(3)):
        image[0, c, y0:y1, x0:x1] = 1.0
    stem = torch.nn.Conv2d(3, 32, 8, stride=8)                       # a p8 "patch embedding": 8×8 grid
    model = CenterNetProposer(in_dim=32, in_stride=8, dim=32, scale_factor=2.0)  # → stride 4, 16×16
    params = list(stem.parameters()) + list(model.parameters())
    opt = torch.optim.Adam(params, lr=5e-3)
    t = centernet_targets([gt], (16, 16), model.stride)
    for _ in range(120):
        loss = centernet_loss(model(stem(image)), t)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        det = decode_detections(model(stem(image)), model.stride, k=20, score_thr=0.3)[0]
    assert len(det["boxes"]) >= 3
    iou = box_iou(det["boxes"][:3], gt)                              # the 3 best detections cover the 3 objects
    assert (iou.max(dim=0).values > 0.7).all(), iou


def test_match_proposals_hand_case():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0],      # IoU 1     → gt 0
                              [0.0, 0.0, 10.0, 12.0],      # 100/120   → gt 0
                              [0.0, 0.0, 10.0, 17.0],      # 100/170 = 0.59 < 0.6 → unmatched
                              [21.0, 20.0, 30.0, 30.0],    # 90/100    → gt 1
                              [50.0, 50.0, 60.0, 60.0],    # 0         → unmatched
                              [0.0, 0.0, 6.0, 10.0]])      # 60/100 = 0.6 exactly → gt 0 (≥)
    p, g = match_proposals(proposals, gt, thr=0.6)
    assert p.tolist() == [0, 1, 3, 5] and g.tolist() == [0, 0, 1, 0]
    p, g = match_proposals(proposals, gt, thr=0.95)
    assert p.tolist() == [0] and g.tolist() == [0]
    for a, b in [(proposals, gt[:0]), (proposals[:0], gt)]:
        p, g = match_proposals(a, b)
        assert p.numel() == 0 and g.numel() == 0 and p.dtype == torch.long
