"""Referring localization / segmentation (pixelllm.tasks.referring) on a tiny generated world with tiny
random models: EOS read-out parity with PixelLLM.forward and generation, P@0.5 on hand-made predictions
(original-image frame, IoU strictly > 0.5), fine-tuning lowers the loss, round-trips through its
checkpoint and resumes exactly, bad input, and the segmentation pipeline's loss, gradients, metrics,
exact resume and reload."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pixelllm.configs.base import apply_overrides
from pixelllm.configs.refcoco import RefSegConfig, get_config, get_refseg_config
from pixelllm.data.datasets import collate
from pixelllm.tasks import referring as R
from pixelllm.tasks.referring import localization as L
from pixelllm.tasks.referring import segmentation as S
from conftest import small_model_overrides

torch.set_num_threads(1)

ADAPTER = {"adapter_depth": 1, "adapter_num_heads": 2, "adapter_mlp_dim": 32}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pixelllm.data.synthetic import generate
    from pixelllm.data.tokenizer import corpus_texts, train_tokenizer

    root = tmp_path_factory.mktemp("refworld")
    generate(root / "data", n_scenes=12, image_size=128, seed=0, workers=1, progress=False)
    tok = train_tokenizer(corpus_texts(root / "data"), root / "tokenizer", vocab_size=400)
    return root, tok


def _cfg(root, **kw):
    base = {"run_dir": str(root), "data_dir": str(root / "data"), "tokenizer_dir": str(root / "tokenizer"),
            "init_from": "", "model_overrides": small_model_overrides(head_parametrization="center_size"),
            "steps": 12, "batch_size": 4, "max_samples": 8, "lr": 3e-3, "warmup_steps": 1, "log_interval": 1,
            "ckpt_interval": 100, "eval_samples": 4, "out_dir": str(root / "checkpoints" / "refcoco")}
    return apply_overrides(get_config(smoke=True), {**base, **kw})


def _seg_cfg(root, init_from, **kw):
    base = {"run_dir": str(root), "data_dir": str(root / "data"), "tokenizer_dir": str(root / "tokenizer"),
            "init_from": str(init_from), **ADAPTER, "steps": 2, "batch_size": 2, "max_samples": 4, "eval_samples": 4,
            "out_dir": str(root / "checkpoints" / "refseg")}
    return apply_overrides(get_refseg_config(smoke=True), {**base, **kw})


@pytest.fixture(scope="module")
def model(world):
    from pixelllm.engine.builder import build_model
    from pixelllm.engine.paths import resolve_paths

    root, tok = world
    cfg = _cfg(root)
    return build_model(cfg, resolve_paths(cfg), tok).eval()


@pytest.fixture(scope="module")
def sets(world, model):
    root, tok = world
    return R.refexp_datasets(root / "data", tok, model.image_size, return_masks=True)


def _batch(ds, n=3):
    return collate([ds[i] for i in range(n)])


# ------------------------------------------------------------------------------------------ read-out
@torch.no_grad()
def test_eos_box_equals_forward_points_at_eos(model, sets):
    b = _batch(sets["train"], 3)
    out = model(b["images"], b["boxes"], b["prompt_ids"], b["prompt_mask"], b["target_ids"], b["target_mask"],
                b["image_sizes"])
    eos = b["target_mask"].sum(1) - 1
    assert (b["target_ids"][torch.arange(3), eos] == 1).all()
    expect = out.points[torch.arange(3), eos]                                           # B×4
    ref = R.referring_forward(model, b)
    assert torch.equal(ref.eos, eos)
    assert torch.allclose(ref.box, expect, atol=1e-6)
    assert torch.allclose(ref.logits, out.logits, atol=1e-5)
    assert torch.allclose(R.predict_boxes(model, b), expect, atol=1e-6)
    # the dataset put the target box at the EOS position, and only there
    assert b["point_valid"].sum(1).eq(1).all() and b["point_valid"][torch.arange(3), eos].all()
    # center_size boxes are boxes: x0 ≤ x1, y0 ≤ y1
    assert (expect[:, 2:] >= expect[:, :2]).all()


@torch.no_grad()
def test_generate_mode_equals_teacher_forcing_on_generated_tokens(world, model, sets):
    _, tok = world
    b = _batch(sets["val"], 2)
    exprs = [m["expression"] for m in b["meta"]]
    tokens, _, points = model.generate(b["images"], None, [f"where is {e}" for e in exprs], tok, max_new_tokens=16,
                                       image_sizes=b["image_sizes"])
    pos = model._lengths(tokens).clamp(max=tokens.shape[1] - 1)                          # first EOS (or last)
    located = R.predict_boxes(model, b, mode="generate", tokenizer=tok)
    assert torch.allclose(located, points[torch.arange(2), pos], atol=1e-6)
    tf = model(b["images"], None, *model._tokenize_prompts([f"where is {e}" for e in exprs], 2, tok), tokens,
               None, b["image_sizes"])
    assert torch.allclose(tf.points[torch.arange(2), pos], located, atol=1e-4)


@torch.no_grad()
def test_predict_referring_matches_dataset_path(world, model, sets):
    _, tok = world
    b = _batch(sets["val"], 2)
    exprs = [m["expression"] for m in b["meta"]]
    boxes, masks = R.predict_referring(model, b["images"], exprs, tok, image_sizes=b["image_sizes"])
    assert masks is None
    assert torch.allclose(boxes, R.predict_boxes(model, b), atol=1e-5)


# ------------------------------------------------------------------------------------------ metric
def test_precision_on_hand_made_predictions(world, monkeypatch):
    """Dataset at S = 64 (half the 128-px images): predictions are made in the 64-px frame and must be
    scored in original pixels. Per sample: the exact GT (hit), a half-width box (IoU exactly 0.5: miss,
    the threshold is strict), a box shifted by w/5 (IoU 2/3: hit)."""
    root, tok = world
    sets64 = R.refexp_datasets(root / "data", tok, 64, splits=("val", "testB"))
    kinds = ["exact", "half", "shift"]

    def fake(model, batch, mode="teacher_forced", tokenizer=None, prompt=None, sam_features=None):
        out = []
        for k, m in enumerate(batch["meta"]):
            x, y, w, h = (v / 2 for v in m["bbox"])                                       # original → 64-px frame
            kind = kinds[m["sent_id"] % 3]
            if kind == "exact":
                out.append([x, y, x + w, y + h])
            elif kind == "half":
                out.append([x, y, x + w / 2, y + h])
            else:
                out.append([x + w / 5, y, x + w + w / 5, y + h])
        return torch.tensor(out)

    monkeypatch.setattr(L, "predict_boxes", fake)

    class Stub(torch.nn.Module):
        device = torch.device("cpu")

    res, rows = R.evaluate_referring(Stub(), sets64, batch_size=4, progress=False, return_predictions=True)
    for split in ("val", "testB"):
        recs = sets64[split].records
        hits = sum(kinds[r["sent_id"] % 3] != "half" for r in recs)
        assert res[split]["n"] == len(recs)
        assert res[split]["P@0.5"] == pytest.approx(hits / len(recs))
    by_kind = {k: [r["iou"] for r in rows if kinds[r["sent_id"] % 3] == k] for k in kinds}
    assert np.allclose(by_kind["exact"], 1.0) and np.allclose(by_kind["half"], 0.5)
    assert np.allclose(by_kind["shift"], (1 - 0.2) / (1 + 0.2))
    # the predicted boxes were mapped back to original pixels (×2)
    r0 = next(r for r in rows if kinds[r["sent_id"] % 3] == "exact")
    assert np.allclose(r0["pred_box"], r0["gt_box"])


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def finetuned(world, model):
    import copy

    root, tok = world
    tr = R.referring_trainer(_cfg(root), copy.deepcopy(model), tok, progress=False)
    tr.fit()
    return tr


def test_finetuning_reduces_the_loss_and_round_trips(world, finetuned, sets):
    from pixelllm.engine.builder import load_stage_model

    _, tok = world
    hist = [h["loss"] for h in finetuned.history]
    assert len(hist) == 12 and all(math.isfinite(v) for v in hist)
    assert np.mean(hist[-3:]) < 0.95 * np.mean(hist[:3])
    assert "point_l1" in finetuned.history[-1] and "giou" in finetuned.history[-1]
    assert (finetuned.out_dir / "final.json").is_file()
    loaded, cfg = load_stage_model(finetuned.out_dir, tok)
    assert cfg.stage == "refcoco" and cfg.eval_samples == 4
    b = _batch(sets["val"], 2)
    with torch.no_grad():
        assert torch.allclose(R.predict_boxes(loaded, b), R.predict_boxes(finetuned.model.eval(), b), atol=1e-5)


def _trainable(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_finetuning_resume_is_exact(world, model, tmp_path):
    """4 steps in one go == 2 steps, then a new trainer (fresh model) resumed from the checkpoint for 2 more."""
    import copy

    root, tok = world
    kw = dict(steps=4, ckpt_interval=2, eval_samples=0)
    full = R.referring_trainer(_cfg(root, out_dir=str(tmp_path / "a"), **kw), copy.deepcopy(model), tok, progress=False)
    full.fit()
    first = R.referring_trainer(_cfg(root, out_dir=str(tmp_path / "b"), **kw), copy.deepcopy(model), tok, progress=False)
    first.fit(until=2)
    again = R.referring_trainer(_cfg(root, out_dir=str(tmp_path / "b"), **kw), copy.deepcopy(model), tok, progress=False)
    assert again.resume() and again.step == 2
    again.fit()
    a, b = _trainable(full.model), _trainable(again.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ bad input
class _StubTok:
    eos_token_id, pad_token_id = 1, 0

    def __call__(self, text):
        return {"input_ids": ([] if text == "§" else [5]) + [1]}


def test_bad_records_are_counted_skips():
    from pixelllm.data.errors import SkipCounter

    good = {"ref_id": 1, "sent_id": 1, "expression": "the red circle", "bbox": [10, 10, 20, 20], "width": 128, "height": 128}
    recs = [good,
            {**good, "ref_id": 2, "expression": "   "},
            {**good, "ref_id": 3, "expression": "§"},
            {**good, "ref_id": 4, "bbox": [10, 10, 0, 5]},
            {**good, "ref_id": 5, "bbox": [120, 10, 20, 20]},
            {**good, "ref_id": 6, "bbox": [-30, 10, 20, 20]},
            {**good, "ref_id": 7, "bbox": [108.5, 10, 20, 20]}]        # 0.5 px over the edge: tolerated
    skips = SkipCounter("test")
    kept = R.check_refexp_records(recs, _StubTok(), skips)
    assert [r["ref_id"] for r in kept] == [1, 7]
    assert skips.counts == {"skipped: empty expression": 1, "skipped: expression with no tokens": 1,
                            "skipped: zero-size box": 1, "skipped: box outside the image": 2}


def test_bad_direct_input_raises(world, model, sets):
    _, tok = world
    b = _batch(sets["val"], 2)
    with pytest.raises(ValueError, match=r"expressions\[1\] = '' has no tokens"):
        R.predict_referring(model, b["images"], ["the red circle", ""], tok)
    with pytest.raises(ValueError, match="2 expressions for 1 images"):
        R.predict_referring(model, b["images"][:1], ["a", "b"], tok)
    broken = sets["val"]
    rec = dict(broken.records[0], bbox=[5.0, 5.0, 0.0, 3.0])
    from pixelllm.data.datasets import RefExpDataset

    ds = RefExpDataset([rec], broken.image_root, tok, image_size=model.image_size)
    with pytest.raises(ValueError, match=r"evaluate_referring\[val\]: 1 unusable record.*zero-size box"):
        R.evaluate_referring(model, {"val": ds}, progress=False)
    t = b["target_ids"].clone()
    t[0, b["target_mask"][0].sum() - 1] = 7
    with pytest.raises(ValueError, match="do not end with EOS"):
        R.eos_positions(t, b["target_mask"])


# ------------------------------------------------------------------------------------------ segmentation
@pytest.fixture(scope="module")
def segmenter(model):
    import copy

    torch.manual_seed(0)
    m = copy.deepcopy(model)
    return R.ReferringSegmenter(m, R.build_mask_head(m, **ADAPTER))


def test_refseg_shapes_loss_and_gradients(segmenter, sets):
    from pixelllm.engine.trainer import computes_own_loss, frozen_feature_fn

    b = _batch(sets["train"], 2)
    assert computes_own_loss(segmenter) and frozen_feature_fn(segmenter) is not None
    segmenter.train()
    assert not segmenter.model.training
    masks, ious, box = segmenter.predict_all(b)
    assert masks.shape == (2, 3, 32, 32) and ious.shape == (2, 3)
    assert (box[:, :2] >= 0).all() and (box[:, 2:] <= 128).all() and (box[:, 2:] >= box[:, :2]).all()
    loss = segmenter(b)
    assert set(loss) == {"loss", "focal", "dice", "iou"} and torch.isfinite(loss["loss"])
    # cached frozen SAM features give the same loss
    cached = segmenter(b, features=segmenter.frozen_image_features(b["images"], b["image_sizes"]))
    assert torch.allclose(cached["loss"], loss["loss"], atol=1e-6)
    pred = segmenter.predict(b)
    assert pred["masks"].shape == (2, 1, 32, 32) and torch.equal(pred["boxes"], box)
    with pytest.raises(KeyError, match="no 'masks'"):
        segmenter({k: v for k, v in b.items() if k != "masks"})
    loss["loss"].backward()
    trainable = {n for n, p in segmenter.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("mask_head.adapter.") for n in trainable)
    assert segmenter.mask_head.adapter.alpha.grad.abs().sum() > 0
    segmenter.zero_grad(set_to_none=True)
    segmenter.eval()


@torch.no_grad()
def test_refseg_gt_prompt_is_used(segmenter, sets):
    b = _batch(sets["val"], 2)
    eos = b["target_mask"].sum(1) - 1
    gt = b["points"][torch.arange(2), eos]
    boxes, masks, low = R.segment_batch(segmenter, b, prompt_boxes=gt)
    assert torch.allclose(boxes, gt)
    assert len(masks) == 2 and masks[0].shape == tuple(b["orig_sizes"][0].tolist()) and masks[0].dtype == torch.bool
    assert low.shape == (2, 1, 32, 32)


def test_refseg_metrics_plumbing_perfect_masks(segmenter, sets, monkeypatch):
    """Masks equal to the ground truth → cIoU = gIoU = 1 and the mask's tight box hits every GT box;
    empty masks → 0."""
    from pixelllm.data.coco import decode_segmentation

    splits = {s: sets[s] for s in ("val", "testB")}
    by_ref = {(r["ref_id"], r["sent_id"]): r for s in splits.values() for r in s.records}

    def perfect(seg, batch, prompt_boxes=None, sam_features=None):
        ms = []
        for m in batch["meta"]:
            r = by_ref[(m["ref_id"], m["sent_id"])]
            ms.append(torch.from_numpy(decode_segmentation(r["segmentation"], r["height"], r["width"]) > 0))
        return None, ms, None

    monkeypatch.setattr(S, "segment_batch", perfect)
    res = R.evaluate_refseg(segmenter, splits, batch_size=4, progress=False)
    for s in ("val", "testB", "all"):
        assert res[s]["cIoU"] == pytest.approx(1.0) and res[s]["gIoU"] == pytest.approx(1.0)
        assert res[s]["mask_box_P@0.5"] == pytest.approx(1.0)
    assert res["all"]["n"] == len(splits["val"]) + len(splits["testB"])

    monkeypatch.setattr(S, "segment_batch", lambda seg, batch, **kw: (None, [
        torch.zeros(int(h), int(w), dtype=torch.bool) for h, w in batch["orig_sizes"]], None))
    res0 = R.evaluate_refseg(segmenter, splits, batch_size=4, progress=False)
    assert res0["all"]["cIoU"] == 0.0 and res0["all"]["gIoU"] == 0.0 and res0["all"]["mask_box_P@0.5"] == 0.0


def test_refseg_training_and_reload(world, finetuned, sets):
    """The refseg config's segmenter: the referring model rebuilt from init_from, trained by the plain
    Trainer (own loss, cached SAM features), reloaded from its checkpoint with the same masks."""
    from pixelllm.engine.builder import checkpoint_config

    root, tok = world
    cfg = _seg_cfg(root, finetuned.out_dir)
    tr = R.refseg_trainer(cfg, R.build_refseg_model(cfg, tok), tok, progress=False)
    assert tr.own_loss and tr.cache is not None
    tr.fit()
    assert len(tr.history) == 2 and all(math.isfinite(h["loss"]) for h in tr.history)
    assert {"focal", "dice", "iou"} <= set(tr.history[-1])
    assert isinstance(checkpoint_config(tr.out_dir)[0], RefSegConfig)
    seg, stored = R.load_refseg(tr.out_dir, tok)
    assert stored.adapter_depth == ADAPTER["adapter_depth"]
    res = R.evaluate_refseg(seg, {"val": sets["val"]}, max_per_split=3, progress=False)
    assert res["val"]["n"] == 3 and 0.0 <= res["val"]["cIoU"] <= 1.0 and 0.0 <= res["val"]["gIoU"] <= 1.0
    b = _batch(sets["val"], 2)
    _, m1, _ = R.segment_batch(seg, b)
    _, m2, _ = R.segment_batch(tr.model.eval(), b)
    assert all(torch.equal(a, c) for a, c in zip(m1, m2))
    assert torch.equal(seg.mask_head.adapter.alpha, tr.model.mask_head.adapter.alpha)
    boxes, masks = R.predict_referring(seg.model, b["images"], [m["expression"] for m in b["meta"]], tok,
                                       segmenter=seg, image_sizes=b["image_sizes"])
    assert masks.shape == (2, 128, 128) and masks.dtype == torch.bool


def test_refseg_resume_is_exact(world, finetuned, tmp_path):
    """4 adapter steps in one go == 2 steps, then a new trainer (rebuilt segmenter) resumed for 2 more."""
    root, tok = world
    kw = dict(steps=4, ckpt_interval=2, eval_samples=0)
    full = R.refseg_trainer(_seg_cfg(root, finetuned.out_dir, out_dir=str(tmp_path / "a"), **kw),
                            R.build_refseg_model(_seg_cfg(root, finetuned.out_dir), tok), tok, progress=False)
    full.fit()
    cfg = _seg_cfg(root, finetuned.out_dir, out_dir=str(tmp_path / "b"), **kw)
    R.refseg_trainer(cfg, R.build_refseg_model(cfg, tok), tok, progress=False).fit(until=2)
    again = R.refseg_trainer(cfg, R.build_refseg_model(cfg, tok), tok, progress=False)
    assert again.resume() and again.step == 2
    again.fit()
    a, b = _trainable(full.model), _trainable(again.model)
    assert a and all(k.startswith("mask_head.adapter.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_refseg_needs_its_referring_checkpoint(world, tmp_path):
    root, tok = world
    with pytest.raises(FileNotFoundError, match="train that stage first"):
        R.build_refseg_model(_seg_cfg(root, tmp_path / "missing"), tok)


def test_referring_model_from_a_checkpoint_with_another_head(world, finetuned, capsys):
    """build_model starting a spatial-head run from an MLP-head checkpoint: the head is left out (reported),
    every other trainable tensor is loaded."""
    from pixelllm.engine.builder import build_model
    from pixelllm.engine.checkpoint import load_checkpoint
    from pixelllm.engine.paths import resolve_paths

    root, tok = world
    cfg = _cfg(root, init_from=str(finetuned.out_dir),
               model_overrides=small_model_overrides(head_parametrization="center_size", head="spatial"))
    m = build_model(cfg, resolve_paths(cfg), tok)
    assert "left out: ['trace_head." in capsys.readouterr().out
    state = load_checkpoint(finetuned.out_dir)["model"]
    own = m.state_dict()
    k = next(k for k in state if k.startswith("prompt_extractor."))
    assert torch.equal(own[k], state[k])
    assert not any(k.startswith("trace_head.mlp") for k in own)
