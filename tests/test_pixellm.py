"""PixelLM parts (pixelllm.modeling.pixellm) on random tensors and a small PixelLLM: codebook ids and groups,
token fusion, the coarse-to-fine pixel decoder's formulas, the losses on hand-made cases, the model's
gathering of codebook states, gradients and freezing, and the paper-shaped variant on the meta device."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pixelllm.modeling.pixellm import (SEG_SLOT, PixelDecoder, PixelLMConfig, SegCodebook, TokenFusion,
                                       build_pixellm, insert_groups, mask_bce, mask_dice, pixellm_loss,
                                       refinement_loss)
from tests.conftest import make_test_model


# ------------------------------------------------------------------------------------------ codebook
def test_codebook_ids_embeddings_and_logits():
    torch.manual_seed(0)
    base = torch.nn.Embedding(10, 8)
    cb = SegCodebook(num_scales=2, tokens_per_scale=3, d_model=8, base_vocab=10)
    assert cb.group_size == 6 and cb.group_ids().tolist() == list(range(10, 16))
    ids = torch.tensor([[3, 10, 15, 0]])
    e = cb.embed(ids, base)
    assert torch.equal(e[0, 0], base.weight[3]) and torch.equal(e[0, 3], base.weight[0])
    assert torch.equal(e[0, 1], cb.embedding[0]) and torch.equal(e[0, 2], cb.embedding[5])
    h = torch.randn(1, 4, 8)
    logits = cb.logits(h, torch.zeros(1, 4, 10))
    assert logits.shape == (1, 4, 16)
    assert torch.allclose(logits[..., 10:], h @ cb.output.weight.t())
    with pytest.raises(ValueError, match="ids must lie"):
        cb.embed(torch.tensor([[16]]), base)


def test_insert_groups_before_eos_and_at_slots():
    group = torch.tensor([20, 21])
    ids = torch.tensor([[5, 6, 1, 0], [7, SEG_SLOT, 8, SEG_SLOT]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    ids = torch.cat([ids, torch.tensor([[0], [1]])], dim=1)
    mask = torch.cat([mask, torch.tensor([[False], [True]])], dim=1)
    out, m = insert_groups(ids, mask, torch.tensor([2, 2]), group, eos_id=1)
    assert out[0][m[0]].tolist() == [5, 6, 20, 21, 20, 21, 1]
    assert out[1][m[1]].tolist() == [7, 20, 21, 8, 20, 21, 1]
    assert out[0, 7:].tolist() == [] and m.sum(1).tolist() == [7, 7]
    with pytest.raises(ValueError, match="2 target slots for 3 targets"):
        insert_groups(ids[1:], mask[1:], torch.tensor([3]), group, eos_id=1)
    with pytest.raises(ValueError, match="must end with EOS"):
        insert_groups(torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.bool), torch.tensor([1]), group, 1)


def test_token_fusion_is_one_linear_map_over_the_n_states():
    torch.manual_seed(0)
    fus = TokenFusion(tokens_per_scale=3, d_model=8, dim=4)
    s = torch.randn(5, 2, 3, 8)
    out = fus(s)
    expected = fus.proj(fus.norm(s).reshape(5, 2, 24))
    assert out.shape == (5, 2, 4) and torch.allclose(out, expected)
    with pytest.raises(ValueError, match="R×L×3×8"):
        fus(torch.randn(5, 2, 2, 8))


# ------------------------------------------------------------------------------------------ decoder
def test_pixel_decoder_modulation_and_weighted_sum():
    torch.manual_seed(0)
    dec = PixelDecoder(dim=16, num_scales=2, num_heads=2, out_size=32)
    with torch.no_grad():
        dec.gamma_logits.copy_(torch.tensor([0.3, -0.2]))
    h = torch.randn(3, 2, 16)
    feats = [torch.randn(3, 16, 4, 4), torch.randn(3, 16, 8, 8)]
    seen = {}
    orig = dec.blocks[1].forward

    def spy(hh, ff):
        seen["f"] = ff
        return orig(hh, ff)

    dec.blocks[1].forward = spy
    out = dec(h, feats)
    m0, m1 = out.scale_masks
    assert m0.shape == (3, 8, 8) and m1.shape == (3, 16, 16)                 # 2× each scale's grid
    assert [a.shape for a in out.attention] == [(3, 4, 4), (3, 8, 8)]
    assert torch.allclose(out.attention[0].sum((-2, -1)), torch.ones(3), atol=1e-5)
    # f^l' = f^l ⊙ (σ(up(m^{l+1})) + 1)
    up = F.interpolate(m0.unsqueeze(1), size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(seen["f"], feats[1] * (torch.sigmoid(up) + 1), atol=1e-6)
    # M̂ = Σ γ^l up(m^l), γ = softmax, Σ γ = 1
    g = torch.softmax(torch.tensor([0.3, -0.2]), 0)
    assert torch.allclose(out.gamma, g) and math.isclose(float(out.gamma.sum().detach()), 1.0, rel_tol=1e-6)
    expect = sum(g[i] * F.interpolate(m.unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
                 for i, m in enumerate(out.scale_masks))
    assert torch.allclose(out.masks, expect, atol=1e-5)


def test_pixel_decoder_without_modulation_leaves_features():
    torch.manual_seed(0)
    dec = PixelDecoder(dim=16, num_scales=2, num_heads=2, out_size=16, modulate=False)
    seen = {}
    orig = dec.blocks[1].forward
    dec.blocks[1].forward = lambda hh, ff: (seen.setdefault("f", ff), orig(hh, ff))[1]
    feats = [torch.randn(2, 16, 4, 4), torch.randn(2, 16, 8, 8)]
    dec(torch.randn(2, 2, 16), feats)
    assert torch.equal(seen["f"], feats[1])


# ------------------------------------------------------------------------------------------ losses
def test_bce_and_dice_by_hand():
    logits = torch.tensor([[[2.0, -1.0]]])
    gt = torch.tensor([[[1.0, 0.0]]])
    bce = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert math.isclose(float(mask_bce(logits, gt)), bce, rel_tol=1e-6)
    p0, p1 = torch.sigmoid(torch.tensor(2.0)).item(), torch.sigmoid(torch.tensor(-1.0)).item()
    dice = 1 - (2 * p0 + 1e-6) / (p0 + p1 + 1 + 1e-6)
    assert math.isclose(float(mask_dice(logits, gt)), dice, rel_tol=1e-5)
    # padding pixels do not count
    valid = torch.tensor([[[1.0, 0.0]]])
    assert math.isclose(float(mask_bce(logits, gt, valid)), math.log1p(math.exp(-2.0)), rel_tol=1e-6)


def test_refinement_loss_weighs_only_pixels_claimed_twice():
    # one answer, 2 targets, 1×2 pixels: both masks claim pixel 0, only mask 0 claims pixel 1 → overlap {0}
    logits = torch.tensor([[[[2.0, 2.0]], [[2.0, -2.0]]]])
    gt = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])
    tv = torch.tensor([[True, True]])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0))) / 2 / 2   # mean over 2 pixels, 2 masks
    assert math.isclose(float(refinement_loss(logits, gt, tv)), expected, rel_tol=1e-6)
    # a padded (unreal) slot neither creates overlap nor counts
    assert float(refinement_loss(logits, gt, torch.tensor([[True, False]]))) == 0.0


def test_total_loss_weights():
    torch.manual_seed(0)
    text = torch.randn(2, 3, 7)
    ids = torch.tensor([[1, 2, 3], [4, 0, 0]])
    tm = torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    masks, gt = torch.randn(2, 2, 4, 4), (torch.rand(2, 2, 4, 4) > 0.5).float()
    tv = torch.tensor([[True, True], [True, False]])
    out = pixellm_loss(text, ids, tm, masks, gt, tv)
    ce = F.cross_entropy(text[tm], ids[tm])
    assert torch.allclose(out["ce"], ce)
    assert torch.allclose(out["bce"], 2.0 * mask_bce(masks[tv], gt[tv]).mean())
    assert torch.allclose(out["dice"], 0.5 * mask_dice(masks[tv], gt[tv]).mean())
    assert torch.allclose(out["refine"], 2.0 * refinement_loss(masks, gt, tv))
    assert torch.allclose(out["loss"], out["ce"] + out["bce"] + out["dice"] + out["refine"])
    off = pixellm_loss(text, ids, tm, masks, gt, tv, refine_weight=0.0)
    assert float(off["refine"]) == 0.0


def test_attention_target_loss_by_hand():
    from pixelllm.modeling.pixellm.losses import attention_target_loss

    attn = torch.tensor([[[0.25, 0.25], [0.25, 0.25]], [[0.7, 0.1], [0.1, 0.1]], [[0.5, 0.5], [0.0, 0.0]]])
    gt = torch.zeros(3, 4, 4)
    gt[0, :2, :2] = 1                                   # top-left cell only → q = (1, 0, 0, 0)
    gt[1, :2, :] = 1                                    # top row, half each → q = (.5, .5, 0, 0)
    # row 2: empty mask, left out
    want = (-math.log(0.25) + -(0.5 * math.log(0.7) + 0.5 * math.log(0.1))) / 2
    assert float(attention_target_loss(attn, gt)) == pytest.approx(want, rel=1e-6)
    assert float(attention_target_loss(attn[2:], gt[2:])) == 0.0


def test_attention_weight_adds_its_term(small_pixellm):
    m = small_pixellm.train()
    b = _batch()
    plain = m(b)
    assert "attn" not in plain
    m.config.attn_weight = 0.5
    try:
        out = m(b)
    finally:
        m.config.attn_weight = 0.0
    assert float(out["attn"]) > 0
    assert float(out["loss"]) == pytest.approx(float(plain["loss"]) + float(out["attn"]), rel=1e-5)
    with pytest.raises(ValueError, match="attn_weight"):
        PixelLMConfig(attn_weight=-1.0)


# ------------------------------------------------------------------------------------------ model
@pytest.fixture(scope="module")
def small_pixellm():
    llm = make_test_model(eval=False, semantic_trainable=False)
    torch.manual_seed(0)
    return build_pixellm(llm, "tiny", dim=32, num_heads=2)


def _batch(s: int = 128):
    torch.manual_seed(1)
    return {"images": torch.rand(2, 3, s, s), "image_sizes": torch.tensor([[128, 128], [96, 128]]),
            "prompt_ids": torch.randint(2, 200, (2, 4)), "prompt_mask": torch.ones(2, 4, dtype=torch.bool),
            "target_ids": torch.tensor([[5, SEG_SLOT, 6, SEG_SLOT, 1], [7, 8, 1, 0, 0]]),
            "target_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool(),
            "masks": torch.rand(2, 2, s, s) > 0.6, "mask_valid": torch.tensor([[True, True], [True, False]])}


def test_model_gathers_one_group_per_target_and_trains_the_right_parts(small_pixellm):
    m = small_pixellm.train()
    b = _batch()
    out = m.run(b)
    g = m.codebook.group_size
    assert out.masks.shape == (2, 2, 128, 128) and out.rows.tolist() == [[True, True], [True, False]]
    assert m.codebook.is_codebook(out.target_ids).sum(1).tolist() == [2 * g, g]
    assert out.decoder.masks.shape[0] == 3                                # 3 (image, target) rows
    assert float(out.masks[1, 1].detach().abs().sum()) == 0.0             # empty slot
    losses = m(b)
    losses["loss"].backward()
    for name, p in m.named_parameters():
        if name.startswith(("codebook.", "fusion.", "projections.", "decoder.")) or "lora_" in name:
            assert p.requires_grad and p.grad is not None, name
        if name.startswith(("llm.image_encoder.", "llm.trace_head.")) or ("language_model" in name and "lora_" not in name):
            assert not p.requires_grad, name
    assert m.added_parameters() == sum(p.numel() for k in ("codebook", "fusion", "projections", "decoder")
                                       for p in getattr(m, k).parameters())
    m.zero_grad()


def test_cached_features_give_the_same_masks(small_pixellm):
    m = small_pixellm.eval()
    b = _batch()
    f = m.frozen_image_features(b["images"], b["image_sizes"])
    c = m.llm.image_encoder.out_channels + m.llm.image_encoder.sam_encoder.patch_embed.proj.out_channels
    assert f.shape[1] == c
    assert torch.allclose(m.predict(b).masks, m.predict(b, features=f).masks, atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        m.run(b, features=f[:, :-1])


def test_one_scale_and_one_token_variants_build_and_run():
    llm = make_test_model(semantic_trainable=False)
    m = build_pixellm(llm, "tiny", dim=32, num_heads=2, num_scales=1, scale_layers=(), tokens_per_scale=1)
    out = m.predict(_batch())
    assert len(out.decoder.scale_masks) == 1 and m.codebook.group_size == 1
    with pytest.raises(ValueError, match="scale_layers"):
        PixelLMConfig(num_scales=2, scale_layers=())


def test_paper_shaped_variant_on_meta():
    from pixelllm.modeling.build import build_pixelllm

    m = build_pixellm(build_pixelllm("paper"), "paper", device="meta")
    assert all(p.device.type == "meta" for p in m.parameters())
    assert m.codebook.embedding.shape == (6, 2048)                       # 2 scales × 3 tokens, Flan-T5-XL width
    assert m.projections[0].neck[0].in_channels == 256 + 1024 and m.projections[1].neck[0].in_channels == 1280
    added = m.added_parameters()
    total = sum(p.numel() for p in m.parameters())
    print(f"paper-shaped PixelLM: {added / 1e6:.2f} M added parameters of {total / 1e9:.2f} B")
    assert 1e6 < added < 0.002 * total


# ------------------------------------------------------------------------------------------ report
def test_report_reads_the_pixellm_section(tmp_path):
    import json

    from pixelllm.report import collect, report_markdown

    res = {"pixellm": {"ciou_single": 0.50, "ciou_single_sam_path": 0.58, "giou_multi": 0.65, "params_added": 300290,
                       "params_added_sam_path": 900000, "latency_ms": 20.0, "latency_ms_sam_path": 35.0},
           "multi": {"pixellm": {"by_targets": {"1": {"giou": 0.7}, "2": {"giou": 0.66}, "3+": {"giou": 0.6}}},
                     "sam_path": {"by_targets": {"1": {"giou": 0.8}, "2": {"giou": 0.7}, "3+": {"giou": 0.65}}}},
           "ablations": {"n1": {"label": "N = 1", "ciou_single": {"mean": 0.4, "values": [0.4]},
                                "giou_multi": {"mean": 0.5, "values": [0.5]}},
                         "1scale": {"label": "one scale", "ciou_single": {"mean": 0.3, "min": 0.28, "max": 0.32,
                                                                          "values": [0.28, 0.32]},
                                    "giou_multi": {"mean": 0.5, "min": 0.45, "max": 0.55, "values": [0.45, 0.55]},
                                    "separates": {"ciou_single": True, "giou_multi": False}}},
           "protocol": {"steps": 9600, "ablation_steps": 1200}}
    (tmp_path / "pixellm.json").write_text(json.dumps(res))
    s = collect(tmp_path)
    assert s["pixellm"]["ciou_gap"] == pytest.approx(-0.08)
    goals = {g["goal"]: g for g in s["goals"]}
    assert goals["PixelLM single-target cIoU − SAM path cIoU"]["met"] is False
    assert goals["PixelLM multi-target gIoU (2–4 targets)"]["met"] is True
    md = "\n".join(report_markdown(s).splitlines())
    assert "| single-target cIoU | 50.0 | 58.0 |" in md
    assert "| latency per image (ms, batch 1, 1 thread) | 20.0 | 35.0 |" in md
    assert "| PixelLM | 70.0 | 66.0 | 60.0 |" in md and "| N = 1 | 40.0 | 50.0 | 1 | — |" in md
    assert "| one scale | 30.0 [28.0, 32.0] | 50.0 [45.0, 55.0] | 2 | yes / no |" in md
    assert "each arm and the recipe at 1,200 steps" in md and "recipe of record: 9,600 steps at batch 8" in md


# ------------------------------------------------------------------------------------------ configs
def test_ablation_arms_change_one_thing_each_and_keep_the_recipe():
    from pixelllm.configs import get_config
    from pixelllm.configs.pixellm import ABLATION_ARMS, ABLATION_SEEDS, ABLATION_STEPS, ablation_config

    rec = get_config("pixellm").to_dict()
    assert rec["steps"] == 9600 and rec["lr_multipliers"] == {"llm.": 0.1} and rec["pixellm_overrides"] == {"attn_weight": 1.0}
    for arm, (_, change) in ABLATION_ARMS.items():
        for seed in ABLATION_SEEDS:
            c = ablation_config(arm, seed).to_dict()
            diff = {k for k in rec if rec[k] != c[k]}
            assert diff <= {"stage", "seed", "steps", "ckpt_interval", "pixellm_overrides"}
            assert c["steps"] == ABLATION_STEPS and c["seed"] == seed
            assert c["pixellm_overrides"] == {"attn_weight": 1.0, **change}     # the recipe's own lever kept
            assert c["stage"] == f"pixellm_abl_{arm}" + (f"_s{seed}" if seed else "")
    assert ablation_config("n1", smoke=True).steps == get_config("pixellm", smoke=True).steps   # SMOKE: seconds
    with pytest.raises(KeyError, match="unknown PixelLM ablation arm 'n2'"):
        ablation_config("n2")


def test_pixellm_plan_is_the_recipe_then_every_arm_at_every_seed():
    from pixelllm.configs.pixellm import ABLATION_ARMS, ABLATION_SEEDS
    from pixelllm.tasks.pixellm import pixellm_plan

    plan = pixellm_plan(smoke=False)
    assert list(plan)[0] == "pixellm" and len(plan) == 1 + len(ABLATION_ARMS) * len(ABLATION_SEEDS)
    assert all(c.stage == name for name, c in plan.items())


def test_train_cli_refuses_ablations_with_other_configs_or_overrides(capsys):
    from pixelllm.train import main

    assert main(["--config", "refcoco", "--ablations"]) == 2
    assert main(["--config", "pixellm", "--ablations", "steps=10"]) == 2
    assert main(["--config", "pixellm", "--ablations", "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--ablations goes with --config pixellm alone" in err and "--jobs must be >= 1" in err


def test_ensure_pixellm_stages_in_two_processes_gives_every_stage_of_the_plan():
    """The ``--jobs 2`` path of ``make reproduce`` (SMOKE: stages of 2 steps; after the notebook tests they
    are found, otherwise trained here)."""
    import json

    from pixelllm.tasks.pixellm import ensure_pixellm_stages, pixellm_plan

    dirs = ensure_pixellm_stages(True, jobs=2, progress=False)
    plan = pixellm_plan(True)
    assert list(dirs) == list(plan)
    for name, out in dirs.items():
        assert out.name == name
        assert json.loads((out / "final.json").read_text())["step"] == plan[name].steps
        assert (out / "final.json.config.json").is_file()
