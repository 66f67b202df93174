"""MaskHead: parity with segment-anything at α = 0, best-IoU selection, loss hand values, frozen SAM."""
from __future__ import annotations

import math

import pytest
import torch

from pixelllm.modeling.mask_head import (MaskAdapter, MaskHead, dice_loss, mask_loss, padding_valid_mask,
                                         postprocess_masks, select_best_mask, upsample_masks)
from pixelllm.modeling.sam import build_sam

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_sam("tiny")  # 128 px, 8×8 embedding, 128-wide prompts, random weights


def _head(sam, **kw):
    kw = {"visual_dim": 24, "text_dim": 16, "adapter_num_heads": 4, "adapter_mlp_dim": 64, **kw}
    return MaskHead(sam.prompt_encoder, sam.mask_decoder, **kw)


def _inputs(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, 128, 128, generator=g) * 255
    boxes = torch.tensor([[10.0, 20.0, 70.0, 90.0], [40.0, 5.0, 120.0, 60.0]])[:b]
    visual = torch.randn(b, 5, 24, generator=g)
    text = torch.randn(b, 7, 16, generator=g)
    return images, boxes, visual, text


@torch.no_grad()
def test_alpha_zero_equals_segment_anything_sam_forward(sam):
    """At init (α = 0) the adapter is the identity: our head == segment-anything's Sam.forward."""
    torch.manual_seed(0)
    head = _head(sam).eval()
    images, boxes, visual, text = _inputs()
    emb = sam.image_encoder(torch.stack([sam.preprocess(x) for x in images]))           # B×128×8×8
    ours_all, ours_iou = head.predict_all(emb, boxes, visual, text)
    ref = sam([{"image": images[i], "original_size": (128, 128), "boxes": boxes[i:i + 1]} for i in range(2)],
              multimask_output=True)
    ref_logits = torch.cat([r["low_res_logits"] for r in ref])                          # B×3×32×32
    ref_iou = torch.cat([r["iou_predictions"] for r in ref])                            # B×3
    assert ours_all.shape == (2, 3, 32, 32)
    assert torch.allclose(ours_all, ref_logits, atol=1e-6)
    assert torch.allclose(ours_iou, ref_iou, atol=1e-6)
    # and the selected mask is the reference's best-IoU candidate
    best, best_iou = head(emb, boxes, visual, text)
    k = ref_iou.argmax(1)
    assert torch.allclose(best[:, 0], ref_logits[torch.arange(2), k], atol=1e-6)
    assert torch.allclose(best_iou, ref_iou.max(1).values)


@torch.no_grad()
def test_gate_opens_the_adapter(sam):
    torch.manual_seed(0)
    head = _head(sam).eval()
    _, boxes, visual, text = _inputs()
    emb = torch.randn(2, 128, 8, 8)
    plain, _ = head.predict_all(emb, boxes)                          # no context: plain SAM
    same, _ = head.predict_all(emb, boxes, visual, text)
    assert torch.equal(plain, same)                                  # tanh(0) · anything = 0
    head.adapter.alpha.fill_(0.5)
    moved, _ = head.predict_all(emb, boxes, visual, text)
    assert (moved - plain).abs().max() > 1e-3
    other, _ = head.predict_all(emb, boxes, visual, torch.randn_like(text))  # the text matters
    assert (other - moved).abs().max() > 1e-4


def test_adapter_hand_case_residual_and_errors():
    torch.manual_seed(0)
    ad = MaskAdapter(dim=16, visual_dim=8, depth=1, num_heads=2, mlp_dim=32)
    sparse = torch.randn(3, 2, 16)
    vis = torch.randn(3, 4, 8)
    assert torch.equal(ad(sparse, vis), sparse)
    with pytest.raises(ValueError, match="text_dim=None"):
        ad(sparse, vis, torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="B×2×16"):
        ad(torch.randn(3, 3, 16), vis)
    with pytest.raises(ValueError):
        MaskAdapter(dim=16)


def test_select_best_mask_hand_case():
    masks = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    iou = torch.tensor([[0.1, 0.9, 0.3], [0.7, 0.2, 0.6]])
    m, q = select_best_mask(masks, iou)
    assert m.shape == (2, 1, 2, 2)
    assert torch.equal(m[0, 0], masks[0, 1]) and torch.equal(m[1, 0], masks[1, 0])
    assert torch.equal(q, torch.tensor([0.9, 0.7]))


def test_loss_hand_values():
    # logits 0 → p = 0.5 everywhere; gt has one positive pixel out of 4.
    logits = torch.zeros(1, 1, 2, 2)
    gt = torch.tensor([[[1, 0], [0, 0]]])
    # focal per pixel = α_t (1 − p_t)^2 · log 2 = 0.5 · 0.25 · log 2 (α = 0.5 for both classes)
    focal = 0.5 * 0.25 * math.log(2)
    # dice = 1 − (2·0.5 + 1) / (2 + 1 + 1) = 0.5
    assert dice_loss(logits[0], gt.float()).item() == pytest.approx(0.5)
    out = mask_loss(logits, gt)
    assert out["focal"].item() == pytest.approx(20 * focal, rel=1e-6)
    assert out["dice"].item() == pytest.approx(0.5, rel=1e-6)
    assert out["loss"].item() == pytest.approx(20 * focal + 0.5, rel=1e-6)
    # IoU term: prediction (logit > 0) is empty → IoU 0; predicted 0.8 → (0.8)^2
    out = mask_loss(logits, gt, iou_pred=torch.tensor([[0.8]]))
    assert out["iou"].item() == pytest.approx(0.64, rel=1e-6)
    assert out["loss"].item() == pytest.approx(20 * focal + 0.5 + 0.64, rel=1e-6)


def test_loss_min_over_candidates_and_padding():
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt[:, :2, :2] = True
    good = torch.where(gt, 12.0, -12.0)                              # near-perfect logits
    bad = -good
    logits = torch.stack([torch.stack([bad[0], good[0]]), torch.stack([good[1], bad[1]])])  # 2×2×4×4
    out = mask_loss(logits, gt)
    assert out["best"].tolist() == [1, 0]
    assert out["loss"].item() < 1e-3
    # padding: wrong predictions on invalid pixels do not count
    valid = torch.ones(2, 4, 4)
    valid[:, :, 3] = 0
    noisy = logits.clone()
    noisy[:, :, :, 3] = 12.0
    cropped = mask_loss(logits[..., :3], gt[..., :3])                # the same loss on the valid 4×3 crop
    assert mask_loss(noisy, gt, valid=valid)["loss"].item() == pytest.approx(cropped["loss"].item(), rel=1e-5)
    assert torch.equal(padding_valid_mask(torch.tensor([[4, 3], [4, 3]]), 4), valid.bool())
    # low-res logits are upsampled to the gt frame
    assert mask_loss(torch.zeros(2, 3, 2, 2), gt)["loss"].shape == ()


def test_only_adapter_gets_gradients(sam):
    torch.manual_seed(0)
    head = _head(sam).train()
    assert not head.prompt_encoder.training and not head.mask_decoder.training
    _, boxes, visual, text = _inputs()
    boxes = boxes.clone().requires_grad_(True)
    emb = torch.randn(2, 128, 8, 8)
    gt = torch.zeros(2, 128, 128, dtype=torch.bool)
    gt[:, 20:80, 20:80] = True
    logits, iou = head.predict_all(emb, boxes, visual, text)
    mask_loss(logits, gt, iou)["loss"].backward()
    sam_params = list(head.prompt_encoder.parameters()) + list(head.mask_decoder.parameters())
    assert all(not p.requires_grad and p.grad is None for p in sam_params)
    assert boxes.grad is None                                        # the box is detached (release)
    assert head.adapter.alpha.grad.abs().sum() > 0                  # at α = 0 only the gate moves
    assert {n for n, p in head.named_parameters() if p.requires_grad} == \
        {f"adapter.{n}" for n, _ in head.adapter.named_parameters()}
    # once the gate is open, the adapter's transformer and projections learn too
    head.zero_grad()
    with torch.no_grad():
        head.adapter.alpha.fill_(0.3)
    logits, iou = head.predict_all(emb, boxes, visual, text)
    mask_loss(logits, gt, iou)["loss"].backward()
    for name in ("output_tokens", "visual_proj.1.weight", "text_proj.1.weight",
                 "transformer.layers.0.cross_attn_token_to_image.q_proj.weight"):
        assert head.adapter.get_parameter(name).grad.abs().sum() > 0, name


@torch.no_grad()
def test_postprocess_matches_sam(sam):
    g = torch.Generator().manual_seed(3)
    low = torch.randn(2, 3, 32, 32, generator=g)
    ours = postprocess_masks(low, 128, [(128, 96), (80, 128)], [(200, 150), (100, 160)])
    for i, (inp, orig) in enumerate([((128, 96), (200, 150)), ((80, 128), (100, 160))]):
        ref = sam.postprocess_masks(low[i:i + 1], inp, orig)[0]
        assert ours[i].shape == (3, *orig)
        assert torch.allclose(ours[i], ref)
    assert upsample_masks(low, 128).shape == (2, 3, 128, 128)
    with pytest.raises(ValueError):
        postprocess_masks(low, 128, [(128, 96)], [(200, 150)])


def test_bad_shapes_raise(sam):
    head = _head(sam)
    with pytest.raises(ValueError, match="boxes"):
        head(torch.randn(2, 128, 8, 8), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="mask_loss"):
        mask_loss(torch.zeros(2, 1, 4, 4), torch.zeros(4, 4))
