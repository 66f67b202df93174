"""DenseCap mAP on hand-computed cases (Java-free: METEOR is injected; the real one is exercised in
tests/test_eval_caption.py, which owns the single Java process)."""
import numpy as np
import pytest

from pixelllm.eval.densecap import box_iou_np, densecap_map, merge_gt_boxes


def exact_meteor(pairs):
    """Stand-in METEOR: 1 if the candidate is one of the references, else 0."""
    return [1.0 if c in refs else 0.0 for c, refs in pairs]


def det(image_id, boxes, scores, captions):
    return {"image_id": image_id, "boxes": boxes, "scores": scores, "captions": captions}


def gt(image_id, boxes, captions):
    return {"image_id": image_id, "boxes": boxes, "captions": captions}


G1, G2 = [0, 0, 10, 10], [20, 20, 30, 30]  # disjoint


def test_perfect_detections_score_one():
    out = densecap_map([det(1, [G1, G2], [0.9, 0.8], ["red circle", "blue square"])],
                       [gt(1, [G1, G2], ["red circle", "blue square"])], meteor_fn=exact_meteor)
    assert out["map"] == pytest.approx(1.0)
    assert out["map_detection"] == pytest.approx(1.0)
    assert len(out["ap_table"]) == 5 * 6 + 5
    assert out["num_pos"] == 2 and out["num_detections"] == 2


def test_duplicate_detection_is_a_false_positive():
    # records by score: d1→G1 TP, d2→G1 again (used) FP, d3→G2 TP
    # cum tp [1,1,2], fp [0,1,1] → recall [.5,.5,1], precision [1,.5,2/3]
    # AP = (51 thresholds r ≤ .50 at precision 1 + 49 thresholds r ∈ [.51,.99] at 2/3) / 100
    expected = (51 * 1.0 + 49 * (2 / 3)) / 100
    out = densecap_map([det(1, [G1, G1, G2], [0.9, 0.8, 0.7], ["a", "a", "b"])],
                       [gt(1, [G1, G2], ["a", "b"])], meteor_fn=exact_meteor)
    assert out["map_detection"] == pytest.approx(expected)
    assert out["map"] == pytest.approx(expected)
    assert expected == pytest.approx(0.836667, abs=1e-6)


def test_wrong_caption_counts_only_for_detection():
    out = densecap_map([det(1, [G1], [0.9], ["green triangle"])], [gt(1, [G1], ["red circle"])],
                       meteor_fn=exact_meteor)
    assert out["map_detection"] == pytest.approx(1.0)
    assert out["map"] == pytest.approx(0.0)


def test_meteor_thresholds_are_strict_and_partial():
    # two exact boxes; METEOR 1.0 (score .9) and 0.1 (score .8).
    # m ∈ {0, .05}: both TP → AP 1.  m ∈ {.1, .15, .2, .25}: 0.1 > m fails → tp [1,0]:
    # recall [.5,.5], precision [1,.5] → AP = 51/100.  mAP = (2·1 + 4·.51)/6 at every IoU threshold.
    scores = {"right": 1.0, "almost": 0.1}
    out = densecap_map([det(1, [G1, G2], [0.9, 0.8], ["right", "almost"])], [gt(1, [G1, G2], ["x", "y"])],
                       meteor_fn=lambda pairs: [scores[c] for c, _ in pairs])
    assert out["ap_table"]["mAP_iou0.5_meteor0.05"] == pytest.approx(1.0)
    assert out["ap_table"]["mAP_iou0.5_meteor0.10"] == pytest.approx(0.51)
    assert out["map"] == pytest.approx((2 + 4 * 0.51) / 6)
    assert out["map_detection"] == pytest.approx(1.0)


def test_iou_threshold_is_inclusive():
    # IoU((0,0,10,20), G1) = 100/200 = 0.5 exactly → TP for t ∈ {.3,.4,.5}, FP for {.6,.7}
    out = densecap_map([det(1, [[0, 0, 10, 20]], [1.0], ["a"])], [gt(1, [G1], ["a"])], meteor_fn=exact_meteor)
    assert out["ap_table"]["mAP_detection_iou0.5"] == pytest.approx(1.0)
    assert out["ap_table"]["mAP_detection_iou0.6"] == pytest.approx(0.0)
    assert out["map_detection"] == pytest.approx(3 / 5)


def test_best_gt_is_taken_even_if_used():
    # d2 overlaps G1 (IoU 70/130 = .538, already used by d1) more than G3 (IoU 50/150 = .333):
    # it takes G1 and is a false positive, even at IoU 0.3 where G3 would have matched (COCO would).
    G3 = [8, 0, 18, 10]
    out = densecap_map([det(1, [G1, [3, 0, 13, 10]], [0.9, 0.8], ["a", "b"])], [gt(1, [G1, G3], ["a", "b"])],
                       meteor_fn=exact_meteor, merge_iou=0.7)
    assert out["ap_table"]["mAP_detection_iou0.3"] == pytest.approx(0.51)


def test_zero_iou_and_missing_detections_and_images_without_gt():
    # image 1: one exact detection; image 2: its GT has no detection; image 3: no GT, one detection (FP).
    # records by score: img3 FP (.95), img1 TP (.9) → tp [0,1], recall [0,.5], precision [0,.5]
    # AP = 51 · .5 / 100.  A detection with IoU 0 is never "ok" either.
    out = densecap_map([det(3, [G1], [0.95], ["a"]), det(1, [G1, [50, 50, 60, 60]], [0.9, 0.1], ["a", "a"])],
                       [gt(1, [G1], ["a"]), gt(2, [G2], ["b"]), gt(3, [], [])], meteor_fn=exact_meteor)
    assert out["map_detection"] == pytest.approx(51 * 0.5 / 100)
    assert out["num_pos"] == 2 and out["num_detections"] == 3


def test_gt_merging_hand_case():
    # Heights 10, 13, 17, 22 (same x-range, y0 = 0): adjacent IoUs .769, .765, .773 ≥ .7, others < .7.
    # neighbours (incl. self): A 2, B 3, C 3, D 2 → B first (tie with C, lowest index) merges {A, B, C};
    # then only D is left.
    boxes = [[0, 0, 10, 10], [0, 0, 10, 13], [0, 0, 10, 17], [0, 0, 10, 22]]
    merged, caps = merge_gt_boxes(boxes, ["a", "b", "c\n", "d"], 0.7)
    np.testing.assert_allclose(merged, [[0, 0, 10, 40 / 3], [0, 0, 10, 22]])
    assert caps == [["a", "b", "c"], ["d"]]
    # through densecap_map: npos = 2; a detection on the merged box with caption "b" is a caption hit
    out = densecap_map([det(1, [[0, 0, 10, 40 / 3], [0, 0, 10, 22]], [0.9, 0.8], ["b", "d"])],
                       [gt(1, boxes, ["a", "b", "c", "d"])], meteor_fn=exact_meteor)
    assert out["num_pos"] == 2 and out["num_gt_before_merge"] == 4
    assert out["map"] == pytest.approx(1.0)


def test_merge_drops_zero_area_boxes_like_official():
    merged, caps = merge_gt_boxes([[0, 0, 0, 5], G1], ["degenerate", "ok"])
    np.testing.assert_allclose(merged, [G1])
    assert caps == [["ok"]]


def test_meteor_called_once_with_all_records():
    calls = []

    def spy(pairs):
        calls.append(list(pairs))
        return exact_meteor(pairs)

    densecap_map([det(1, [G1, G2], [0.5, 0.9], ["a", "b"]), det(2, [G1], [0.7], ["c"])],
                 [gt(1, [G1, G2], ["a", "b"]), gt(2, [G1], ["c"])], meteor_fn=spy)
    assert len(calls) == 1
    assert [c for c, _ in calls[0]] == ["b", "c", "a"]  # all records, sorted by score


def test_box_iou_np_matches_torchvision():
    import torch
    from torchvision.ops import box_iou

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 50, (6, 2)); a = np.concatenate([a, a + rng.uniform(1, 30, (6, 2))], 1)
    b = rng.uniform(0, 50, (5, 2)); b = np.concatenate([b, b + rng.uniform(1, 30, (5, 2))], 1)
    np.testing.assert_allclose(box_iou_np(a, b), box_iou(torch.tensor(a), torch.tensor(b)).numpy(), atol=1e-12)


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match=r"detections\[0\].*2 boxes but 1 captions"):
        densecap_map([det(1, [G1, G2], [0.9, 0.8], ["a"])], [gt(1, [G1], ["a"])], meteor_fn=exact_meteor)
    with pytest.raises(ValueError, match="absent from ground_truth"):
        densecap_map([det(7, [G1], [0.9], ["a"])], [gt(1, [G1], ["a"])], meteor_fn=exact_meteor)
    with pytest.raises(ValueError, match="lacks field 'scores'"):
        densecap_map([{"image_id": 1, "boxes": [G1], "captions": ["a"]}], [gt(1, [G1], ["a"])],
                     meteor_fn=exact_meteor)
    with pytest.raises(ValueError, match="no .*box"):
        densecap_map([], [gt(1, [], [])], meteor_fn=exact_meteor)
