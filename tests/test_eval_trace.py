"""point_l1 (official PointEvaluator semantics) and its baselines on hand-computed cases."""
import numpy as np
import pytest
import torch

from pixelllm.eval.trace import (centre_points, normalize_points, point_l1, point_l1_by_class, point_l1_per_token,
                                 random_other_narrative)


def test_two_points_each_take_their_closest_sample():
    gt = np.array([[[[0.0, 0.0], [1.0, 1.0]]]])  # B=1, T=1, S=2
    pred = np.array([[[0.1, 0.1, 0.8, 1.0]]])     # (x0, y0, x1, y1)
    # p0 → (0,0): mean(|.1|, |.1|) = .1 ; p1 → (1,1): mean(.2, 0) = .1 ; token = mean(.1, .1)
    assert point_l1_per_token(pred, gt)[0, 0] == pytest.approx(0.1)
    assert point_l1(pred, gt, [[True]]) == pytest.approx(0.1)
    # same as (..., P, 2) input, and torch tensors work
    assert point_l1(torch.tensor(pred).view(1, 1, 2, 2), torch.tensor(gt), torch.tensor([[True]])) == pytest.approx(0.1)


def test_single_point_and_coordinate_mean():
    gt = np.array([[[[0.5, 0.7], [0.0, 0.0]]]])
    # off by 0.2 in y only: L1 averaged over (x, y) as the official evaluator → 0.1
    assert point_l1(np.array([[[0.5, 0.5]]]), gt, [[True]]) == pytest.approx(0.1)


def test_valid_mask_and_reductions():
    gt = np.zeros((2, 3, 4, 2))                      # every sample at the origin
    pred = np.zeros((2, 3, 4))
    pred[0, 0] = 0.1                                  # row 0: one valid token, error 0.1
    pred[0, 1:] = 9.0                                 # invalid tokens with a huge error — ignored
    pred[1] = 0.3                                     # row 1: three valid tokens, error 0.3 each
    valid = np.array([[True, False, False], [True, True, True]])
    assert point_l1(pred, gt, valid) == pytest.approx((0.1 + 3 * 0.3) / 4)              # pooled tokens
    assert point_l1(pred, gt, valid, reduction="sample") == pytest.approx((0.1 + 0.3) / 2)  # per row first
    assert np.isnan(point_l1(pred, gt, np.zeros((2, 3), bool)))
    with pytest.raises(ValueError, match="reduction"):
        point_l1(pred, gt, valid, reduction="mean")
    with pytest.raises(ValueError, match="do not match"):
        point_l1(pred[:, :2], gt, valid)


def test_normalize_points_uses_resized_w_h():
    pts = torch.tensor([[[50.0, 25.0, 100.0, 50.0]], [[10.0, 10.0, 20.0, 40.0]]])  # B=2, T=1
    sizes = torch.tensor([[50, 100], [40, 20]])  # (h, w) after resize
    np.testing.assert_allclose(normalize_points(pts, sizes), [[[0.5, 0.5, 1.0, 1.0]], [[0.5, 0.25, 1.0, 1.0]]])


def test_by_class_breakdown():
    gt = np.zeros((1, 4, 1, 2))
    pred = np.array([[[0.2, 0.2], [0.4, 0.4], [0.6, 0.6], [9, 9]]])
    out = point_l1_by_class(pred, gt, [[True, True, True, False]], [["shape", "position", "shape", "function"]])
    assert out["shape"] == {"l1": pytest.approx(0.4), "n": 2}
    assert out["position"] == {"l1": pytest.approx(0.4), "n": 1}
    assert "function" not in out  # its only token is invalid
    assert out["all"]["n"] == 3 and out["all"]["l1"] == pytest.approx(0.4)


def test_centre_baseline():
    gt = np.array([[[[0.5, 0.9], [0.9, 0.9]], [[0.1, 0.5], [0.5, 0.5]]]])  # B=1, T=2, S=2
    centre = centre_points((1, 2))
    assert centre.shape == (1, 2, 2)
    # token 0: closest (0.5, 0.9) → mean(0, .4) = .2 ; token 1: (0.5, 0.5) → 0
    assert point_l1(centre, gt, [[True, True]]) == pytest.approx(0.1)


def test_other_narrative_baseline_relative_positions():
    a = np.arange(4.0)[:, None] * np.ones((1, 4))   # narrative A: 4 tokens, values 0..3
    b = np.array([[10.0] * 4, [20.0] * 4])          # narrative B: 2 tokens
    out_a, out_b = random_other_narrative([a, b], rng=0)  # n = 2: the only derangement is the swap
    # A's positions 0, .25, .5, .75 → B's nearest of 0, .5 (tie at .25 → the earlier one)
    np.testing.assert_allclose(out_a[:, 0], [10, 10, 20, 20])
    # B's positions 0, .5 → A's tokens 0 and 2
    np.testing.assert_allclose(out_b[:, 0], [0, 2])
    assert out_a.shape == a.shape and out_b.shape == b.shape
    # only valid donor tokens are borrowed
    out_a, _ = random_other_narrative([a, b], valid=[np.ones(4, bool), np.array([False, True])], rng=1)
    np.testing.assert_allclose(out_a[:, 0], [20, 20, 20, 20])


def test_other_narrative_is_a_derangement():
    targets = [np.full((3, 2), float(i)) for i in range(5)]
    seen = set()
    for seed in range(30):
        out = random_other_narrative(targets, rng=seed)
        donors = [int(o[0, 0]) for o in out]
        assert all(d != i for i, d in enumerate(donors))
        assert sorted(donors) == list(range(5))  # a permutation: every narrative donates once
        seen.add(tuple(donors))
    assert len(seen) > 5  # random, not a fixed cycle
    # a narrative without valid tokens borrows but does not donate
    valid = [np.ones(3, bool)] * 4 + [np.zeros(3, bool)]
    out = random_other_narrative(targets, valid=valid, rng=0)
    assert all(int(o[0, 0]) != 4 for o in out) and int(out[4][0, 0]) != 4
    with pytest.raises(ValueError, match="≥ 2 narratives"):
        random_other_narrative(targets[:1])


def test_word_centres_groups_sub_word_pieces():
    from pixelllm.eval.trace import word_centres

    tokens = ["▁a", "▁red", "▁ri", "ng", ",", "▁a", "▁Ring", "."]
    boxes = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [10, 10, 20, 20], [20, 10, 30, 20], [0, 0, 0, 0],
                      [0, 0, 2, 2], [50, 60, 70, 80], [0, 0, 0, 0]], float)
    got = word_centres(tokens, boxes, "ring")
    np.testing.assert_allclose(got, [[20.0, 15.0], [60.0, 70.0]])    # mean of the pieces' box centres
    assert word_centres(tokens, boxes, "moon").shape == (0, 2)
    with pytest.raises(ValueError, match="8 tokens but 3 points"):
        word_centres(tokens, boxes[:3], "ring")
