"""The PixelLLM loss against hand computations: official ε/(V−1) smoothing, masks, λ, normalisers, GIoU."""
import math

import pytest
import torch
import torch.nn.functional as F

from pixelllm.modeling.losses import count_targets, label_smoothed_cross_entropy, pixelllm_loss

# logits (0, ln 2, ln 5) → p = (1/8, 2/8, 5/8); true class 2, ε = 0.1, V = 3
LOGITS = torch.tensor([[[0.0, math.log(2.0), math.log(5.0)]]])
OFFICIAL = -(0.9 * math.log(5 / 8) + 0.05 * math.log(1 / 8) + 0.05 * math.log(2 / 8))  # ε/(V−1) = 0.05 off-target
TORCH_STYLE = -(0.9 + 0.1 / 3) * math.log(5 / 8) - 0.1 / 3 * (math.log(1 / 8) + math.log(2 / 8))  # ε/V everywhere


def test_smoothing_matches_hand_computation_not_torch_variant():
    got = label_smoothed_cross_entropy(LOGITS, torch.tensor([[2]]), 0.1).item()
    assert got == pytest.approx(OFFICIAL, abs=1e-6)
    assert got == pytest.approx(0.5962900614611484, abs=1e-6)
    torch_ls = F.cross_entropy(LOGITS[0], torch.tensor([2]), label_smoothing=0.1).item()
    assert torch_ls == pytest.approx(TORCH_STYLE, abs=1e-6)
    assert abs(got - torch_ls) > 0.04  # the two conventions really differ


def test_smoothing_equals_soft_target_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    y = torch.randint(0, 7, (2, 5), generator=g)
    q = F.one_hot(y, 7).float() * 0.9 + (1 - F.one_hot(y, 7).float()) * 0.1 / 6  # official target distribution
    ref = F.cross_entropy(logits.reshape(-1, 7), q.reshape(-1, 7), reduction="none").reshape(2, 5)
    torch.testing.assert_close(label_smoothed_cross_entropy(logits, y, 0.1), ref, rtol=1e-6, atol=1e-6)
    # ε = 0 is plain cross entropy
    torch.testing.assert_close(label_smoothed_cross_entropy(logits, y, 0.0),
                               F.cross_entropy(logits.transpose(1, 2), y, reduction="none"), rtol=1e-6, atol=1e-6)


def _batch():
    # sample 0: trace, tokens [5, 6, EOS] + pad; sample 1: caption, [7, EOS] + 2 pad
    target_ids = torch.tensor([[5, 6, 1, 0], [7, 1, 0, 0]])
    points = torch.zeros(2, 4, 4)
    points[0, 0] = torch.tensor([4.0, 8.0, 12.0, 16.0])
    points[0, 1] = torch.tensor([2.0, 2.0, 2.0, 2.0])
    point_valid = torch.tensor([[True, True, False, False], [True, False, False, False]])  # caption row: per-task mask drops it
    return {"target_ids": target_ids, "target_mask": target_ids != 0, "points": points,
            "point_valid": point_valid, "task": ["trace", "caption"]}


def test_masks_lambda_and_average_by_hand():
    b = _batch()
    V = 9
    logits = torch.zeros(2, 4, V)  # uniform: CE = −(0.9 + 0.1) log(1/V) = log V for every valid token
    pred = torch.zeros(2, 4, 4)
    out = pixelllm_loss(logits, pred, b, lambda_point=0.1, label_smoothing=0.1)
    assert out["n_tokens"].item() == 5  # 3 + 2 (EOS supervised, pad ignored)
    assert out["ce"].item() == pytest.approx(math.log(V), abs=1e-6)
    # valid points: sample 0 tokens 0 and 1 → mean|.| over 4 coords = 10 and 2 → average 6
    assert out["n_points"].item() == 2
    assert out["point_l1"].item() == pytest.approx(6.0)
    assert out["loss"].item() == pytest.approx(math.log(V) + 0.1 * 6.0, abs=1e-6)
    assert count_targets(b) == (5, 2)


def test_pad_ignored_eos_supervised_invalid_points_ignored():
    b = _batch()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 9, generator=g)
    pred = torch.rand(2, 4, 4, generator=g) * 10
    base = pixelllm_loss(logits, pred, b)["loss"]
    l2 = logits.clone()
    l2[1, 3] += 100.0                                   # a pad position
    p2 = pred.clone()
    p2[0, 3] = float("nan")                             # prediction at an invalid token
    b2 = dict(b, points=b["points"].clone())
    b2["points"][1, 0] = float("inf")                   # caption sample's (masked) target
    assert pixelllm_loss(l2, p2, b2)["loss"].item() == pytest.approx(base.item(), abs=1e-6)
    l3 = logits.clone()
    l3[0, 2, 4] += 5.0                                  # the EOS position of sample 0
    assert pixelllm_loss(l3, pred, b)["loss"].item() != pytest.approx(base.item(), abs=1e-4)


def test_empty_caption_sample_is_ignored_like_official():
    b = _batch()
    b["target_ids"][1] = torch.tensor([1, 0, 0, 0])       # empty caption: first token is EOS
    b["target_mask"] = b["target_ids"] != 0
    out = pixelllm_loss(torch.zeros(2, 4, 9), torch.zeros(2, 4, 4), b)
    assert out["n_tokens"].item() == 3


def test_caption_only_batch_has_zero_point_term_and_finite_loss():
    b = _batch()
    b["task"] = ["caption", "caption"]
    out = pixelllm_loss(torch.zeros(2, 4, 9), torch.zeros(2, 4, 4, requires_grad=True), b)
    assert out["point_l1"].item() == 0.0 and out["n_points"].item() == 0
    out["loss"].backward()  # still differentiable, no NaN from 0/0


def test_global_normalisers_split_batch_sums_to_full_batch():
    """Two halves normalised by the full batch's counts add up to the full-batch loss (what the trainer
    uses for accumulation / DDP)."""
    b = _batch()
    g = torch.Generator().manual_seed(2)
    logits, pred = torch.randn(2, 4, 9, generator=g), torch.rand(2, 4, 4, generator=g) * 10
    full = pixelllm_loss(logits, pred, b)["loss"]
    n_tok, n_pt = count_targets(b)
    halves = []
    for i in range(2):
        bi = {k: (v[i:i + 1] if torch.is_tensor(v) else v[i:i + 1]) for k, v in b.items()}
        halves.append(pixelllm_loss(logits[i:i + 1], pred[i:i + 1], bi, num_tokens=n_tok, num_points=n_pt)["loss"])
    assert (halves[0] + halves[1]).item() == pytest.approx(full.item(), rel=1e-6)


def test_giou_option_for_box_tasks():
    b = {"target_ids": torch.tensor([[3, 1]]), "target_mask": torch.tensor([[True, True]]),
         "points": torch.tensor([[[0.0, 0, 0, 0], [2.0, 0.0, 3.0, 1.0]]]),
         "point_valid": torch.tensor([[False, True]]), "task": ["refer"]}
    pred = torch.tensor([[[0.0, 0, 0, 0], [0.0, 0.0, 1.0, 1.0]]])
    out = pixelllm_loss(torch.zeros(1, 2, 5), pred, b, lambda_point=0.1, giou_weight=2.0)
    # disjoint unit boxes 1 px apart: IoU 0, enclosing 3, union 2 → GIoU = −1/3 → loss 4/3
    assert out["giou"].item() == pytest.approx(4 / 3, abs=1e-6)
    assert out["point_l1"].item() == pytest.approx(1.0)  # |0−2|, 0, |1−3|, 0 → mean 1
    assert out["loss"].item() == pytest.approx(math.log(5) + 0.1 * 1.0 + 2.0 * 4 / 3, abs=1e-5)
    same = pixelllm_loss(torch.zeros(1, 2, 5), b["points"], b, giou_weight=1.0)
    assert same["giou"].item() == pytest.approx(0.0, abs=1e-6)


def test_cell_cross_entropy_targets_the_cell_of_the_box_centre():
    from pixelllm.modeling.losses import cell_cross_entropy

    # a 4×4 grid over a 128×128 frame (32-px cells); box centre (112, 40) → column 3, row 1
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0, 1, 3] = 5.0
    target = torch.tensor([[[96.0, 32, 128, 48], [float("nan"), 0, 0, 0]]])
    ce = cell_cross_entropy(logits, target, (128, 128))
    assert ce[0, 0].item() == pytest.approx(-math.log(math.exp(5) / (math.exp(5) + 15)), abs=1e-5)
    assert ce[0, 1].item() == pytest.approx(math.log(16), abs=1e-5)      # NaN target: a finite value, masked later
    # a centre on the frame's far edge stays in the last cell
    edge = cell_cross_entropy(logits[:, :1], torch.tensor([[[120.0, 120, 128, 128]]]), (128, 128))
    assert edge.item() == pytest.approx(math.log(math.exp(5) + 15), abs=1e-5)    # cell (3, 3), not (1, 3)


def test_cell_term_is_weighted_masked_and_absent_at_weight_zero():
    b = {"target_ids": torch.tensor([[3, 4, 1]]), "target_mask": torch.tensor([[True, True, True]]),
         "points": torch.tensor([[[0.0, 0, 32, 32], [64.0, 64, 128, 128], [0.0, 0, 0, 0]]]),
         "point_valid": torch.tensor([[True, True, False]]), "task": ["trace"],
         "images": torch.zeros(1, 3, 128, 128)}
    pts = b["points"].clone()
    cells = torch.zeros(1, 3, 2, 2)
    cells[0, 0, 0, 0] = 10.0                                  # token 0 right (cell (0, 0)); token 1 uniform
    plain = pixelllm_loss(torch.zeros(1, 3, 5), pts, b)
    assert "cell_ce" not in plain
    out = pixelllm_loss(torch.zeros(1, 3, 5), pts, b, cell_logits=cells, cell_weight=0.5)
    right = -math.log(math.exp(10) / (math.exp(10) + 3))
    assert out["cell_ce"].item() == pytest.approx((right + math.log(4)) / 2, abs=1e-5)
    assert out["loss"].item() == pytest.approx(plain["loss"].item() + 0.5 * out["cell_ce"].item(), abs=1e-5)


def test_pointer_head_returns_its_attention_logits():
    from pixelllm.modeling.trace_head import PointerHead

    torch.manual_seed(0)
    head = PointerHead(dim=8, feature_dim=6, attn_dim=4, hidden_dim=4)
    hidden, grid = torch.randn(2, 3, 8), torch.randn(2, 6, 4, 5)
    pts, logits = head(hidden, (64, 80), grid, return_logits=True)
    assert logits.shape == (2, 3, 4, 5)
    torch.testing.assert_close(pts, head(hidden, (64, 80), grid))
    attn, _ = head.attention(hidden, grid)
    torch.testing.assert_close(attn, logits.flatten(-2).softmax(-1))


def test_pointer_head_context_is_causal():
    from pixelllm.modeling.trace_head import PointerHead

    torch.manual_seed(0)
    head = PointerHead(dim=8, feature_dim=6, attn_dim=4, hidden_dim=4, context_layers=1).eval()
    hidden, grid = torch.randn(1, 5, 8), torch.randn(1, 6, 4, 4)
    later = hidden.clone()
    later[:, 3:] = torch.randn(1, 2, 8)                     # change the last two states only
    a, b = head(hidden, (64, 64), grid), head(later, (64, 64), grid)
    torch.testing.assert_close(a[:, :3], b[:, :3])           # the first three points do not see them
    assert not torch.allclose(a[:, 3:], b[:, 3:])
    # without the context layer a state's point depends on that state alone; with it, on the ones before too
    earlier = hidden.clone()
    earlier[:, 0] = torch.randn(8)
    assert not torch.allclose(head(earlier, (64, 64), grid)[:, 2], a[:, 2])


def test_token_weights_scale_chosen_targets_only():
    b = _batch()                                        # valid targets: [5, 6, EOS] and [7, EOS]
    V = 9
    logits = torch.zeros(2, 4, V)                       # uniform: every valid token's CE = log V
    out = pixelllm_loss(logits, None, b, token_weights={6: 5.0, 7: 0.0})
    # (1 + 5 + 1 + 0 + 1) · log V over the 5 tokens: the normaliser stays the token count
    assert out["ce"].item() == pytest.approx(8 / 5 * math.log(V), abs=1e-6)
    assert out["n_tokens"].item() == 5
    same = pixelllm_loss(logits, None, b, token_weights={})
    assert same["ce"].item() == pytest.approx(math.log(V), abs=1e-6)


class _Tok:                                             # the two calls word_token_weights makes of a HF tokenizer
    all_special_ids = [0, 1]
    pieces = {" circle": [57], " circles": [205], " big star": [12, 75], " star": [75]}

    def __call__(self, text, add_special_tokens=True):
        return type("Enc", (), {"input_ids": self.pieces.get(text, []) + ([1] if add_special_tokens else [])})


def test_word_token_weights_maps_words_to_their_tokens():
    from pixelllm.modeling.losses import word_token_weights

    got = word_token_weights(_Tok(), {"circle": 5.0, "circles": 5, "big star": 2.0, "star": 3.0})
    assert got == {57: 5.0, 205: 5.0, 12: 2.0, 75: 3.0}   # a shared token takes the larger weight
    with pytest.raises(ValueError, match="no token of 'hexagon'"):
        word_token_weights(_Tok(), {"hexagon": 2.0})


def test_loss_for_config_applies_the_word_weights():
    from pixelllm.configs.base import TrainConfig
    from pixelllm.modeling.losses import loss_for_config

    assert loss_for_config(TrainConfig(), _Tok()) is pixelllm_loss          # no weights: the paper's loss
    fn = loss_for_config(TrainConfig(word_weights={"circle": 5.0}), _Tok())
    assert fn.keywords == {"token_weights": {57: 5.0}}
    b = _batch()
    b["target_ids"] = torch.tensor([[57, 6, 1, 0], [7, 1, 0, 0]])
    logits = torch.zeros(2, 4, 60)                       # uniform: every valid token's CE = log 60
    assert fn(logits, None, b)["ce"].item() == pytest.approx((5 + 1 + 1 + 1 + 1) / 5 * math.log(60), abs=1e-5)
