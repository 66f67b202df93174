"""Dense object captioning (PAPER_NOTES.md §3/§4): proposals matched to ground truth at IoU ≥ 0.6 become the
prompt boxes, read through the PixelLLM's own prompt path; detection + caption losses reach the proposer and
the captioner's trainable parts (not the frozen SAM); ``predict`` returns boxes in original-image pixels; the
engine's Trainer lowers the loss, caches the frozen features, resumes exactly, and ``build_densecap`` reloads
the stage; the DenseCap evaluation plumbing gives a hand-computable mAP with a fake METEOR."""
from __future__ import annotations

import pytest
import torch

from pixelllm.modeling.dense_captioner import build_dense_captioner, to_original_frame
from pixelllm.tasks import densecap as dc
from conftest import SMALL_MODEL
from test_task_region_caption import make_model, tok, world  # noqa: F401  (fixtures)

torch.set_num_threads(1)


def make_captioner(tok, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_dense_captioner(make_model(tok, seed), tok, dim=32, **kw)


@pytest.fixture(scope="module")
def train_set(world, tok):
    return dc.load_densecap_dataset(world, "train", tok, image_size=128)


# ------------------------------------------------------------------------------------------------ data
def test_dataset_clips_skips_and_counts_bad_regions(tmp_path, tok):
    recs = [
        {"image_id": 1, "file_name": "a.jpg", "width": 100, "height": 50, "regions": [
            {"region_id": 1, "phrase": "red circle", "bbox": [90.0, 10.0, 20.0, 10.0]},    # clipped to w 10
            {"region_id": 2, "phrase": "blue star", "bbox": [10.0, 10.0, 0.0, 5.0]},        # zero width
            {"region_id": 3, "phrase": "green square", "bbox": [0.0, 60.0, 5.0, 5.0]},      # below the image
            {"region_id": 4, "phrase": "  ", "bbox": [1.0, 1.0, 5.0, 5.0]}]},               # empty phrase
        {"image_id": 2, "file_name": "b.jpg", "width": 100, "height": 50, "regions": []},   # no region
        {"image_id": 3, "file_name": "c.jpg", "width": 100, "height": 50, "regions": [
            {"region_id": 5, "phrase": "blue star", "bbox": [0.0, 60.0, 5.0, 5.0]}]},       # nothing left
    ]
    ds = dc.DenseCapDataset(recs, tmp_path, tok, image_size=64)
    assert len(ds) == 1
    assert ds.skips.counts == {"clipped: box partly outside the image": 1, "skipped: box with width or height <= 0": 1,
                               "skipped: box outside the image": 2, "skipped: empty phrase": 1,
                               "skipped: image without regions": 2}
    assert ds.ground_truth() == [{"image_id": "1", "boxes": [[90.0, 10.0, 100.0, 20.0]], "captions": ["red circle"]}]


def test_samples_and_collate(train_set):
    s = train_set[0]
    r = train_set.records[0]
    assert s["gt_boxes"].shape == (len(r["regions"]), 4) and len(s["gt_captions"]) == len(r["regions"])
    x, y, w, h = r["regions"][0]["bbox"]
    assert torch.allclose(s["gt_boxes"][0], torch.tensor([x, y, x + w, y + h]))   # 128 → 128: scale 1
    assert all(ids[-1] == 1 for ids in s["gt_target_ids"])
    b = dc.densecap_collate([train_set[0], train_set[1]])
    assert b["images"].shape == (2, 3, 128, 128) and len(b["gt_boxes"]) == 2


# ---------------------------------------------------------------------------------------------- model
def test_proposals_matched_at_0_6_become_the_prompt_boxes(tok, train_set, monkeypatch):
    cap = make_captioner(tok, append_gt=False, max_prompts_per_image=0)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [21.0, 21.0, 30.0, 30.0]])
    props = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # IoU 1.00 with gt 0 → prompt, caption 0
                          [0.0, 0.0, 10.0, 5.0],      # IoU 0.50 → dropped
                          [20.0, 20.0, 30.0, 30.0],   # IoU 81/100 = 0.81 with gt 1 → prompt, caption 1
                          [0.0, 0.0, 10.0, 6.0],      # IoU 0.60 → kept (≥)
                          [50.0, 50.0, 60.0, 60.0]])  # no overlap → dropped
    boxes, gi = cap.select_prompts(props, gt)
    assert torch.equal(boxes, props[[0, 2, 3]]) and gi.tolist() == [0, 1, 0]
    cap.append_gt = True                              # detectron2's proposal_append_gt: gt boxes join (IoU 1)
    boxes, gi = cap.select_prompts(props, gt)
    assert torch.equal(boxes, torch.cat([props[[0, 2, 3]], gt])) and gi.tolist() == [0, 1, 0, 0, 1]

    # inside forward: the decoded proposals are replaced by `props`; the prompts captioned are exactly the
    # matched ones, each read by the PixelLLM's own prompt path on its image's grid
    cap.append_gt = False
    monkeypatch.setattr("pixelllm.modeling.centernet.decode_detections",
                        lambda out, *a, **k: [{"boxes": props, "scores": torch.ones(5), "labels": torch.zeros(5)}])
    seen = {}
    real = cap.pixelllm.prompt_tokens

    def spy(grid, boxes, sizes):
        seen["grid"], seen["boxes"] = grid.detach().clone(), boxes.clone()
        return real(grid, boxes, sizes)

    monkeypatch.setattr(cap.pixelllm, "prompt_tokens", spy)
    s = train_set[0]
    batch = dc.densecap_collate([s])
    batch["gt_boxes"] = [gt]
    batch["gt_target_ids"] = [[[5, 6, 1], [7, 1]]]
    losses = cap(batch)
    with torch.no_grad():
        grid = cap.pixelllm.image_features(batch["images"], batch["image_sizes"])
    assert seen["grid"].shape[0] == 3 and all(torch.allclose(g, grid[0], atol=1e-6) for g in seen["grid"])
    assert torch.equal(seen["boxes"], props[[0, 2, 3]])
    assert int(losses["prompts"]) == 3


def test_matching_example_flags_the_proposals_matched_to_ground_truth(tok, train_set, monkeypatch):
    cap = make_captioner(tok).eval()
    s = train_set[0]
    gt = s["gt_boxes"].reshape(-1, 4)
    props = torch.cat([gt[:1], torch.tensor([[0.0, 0.0, 1.0, 1.0]])])   # a copy of gt 0 (IoU 1) and a speck
    monkeypatch.setattr("pixelllm.modeling.centernet.decode_detections",
                        lambda out, *a, **k: [{"boxes": props, "scores": torch.ones(2), "labels": torch.zeros(2)}])
    ex = dc.matching_example(cap, s)
    assert set(ex) == {"image", "gt_boxes", "proposals", "matched", "match_iou"} and ex["match_iou"] == cap.match_iou
    h, w = s["image_sizes"].tolist()
    assert ex["image"].shape == (h, w, 3)
    assert ex["matched"].tolist() == [True, False]
    assert torch.equal(torch.as_tensor(ex["proposals"]), props) and torch.equal(torch.as_tensor(ex["gt_boxes"]), s["gt_boxes"])
    assert dc.matching_example(cap, s, match_iou=1.01)["matched"].tolist() == [False, False]
    from pixelllm.viz import figure_matching

    assert figure_matching(**ex).axes[0].get_title().startswith("1/2 proposals")


def test_losses_backprop_into_the_proposer_and_the_trainable_captioner(tok, train_set):
    cap = make_captioner(tok).train()
    losses = cap(dc.densecap_collate([train_set[0], train_set[1]]))
    assert int(losses["prompts"]) > 0
    assert float(losses["loss"]) == pytest.approx(float(losses["det"]) + float(losses["ce"]), rel=1e-6)
    losses["loss"].backward()

    def grad_norm(module, name_filter=lambda n: True):
        gs = [p.grad.abs().sum() for n, p in module.named_parameters() if name_filter(n) and p.grad is not None]
        return float(sum(gs)) if gs else 0.0

    m = cap.pixelllm
    assert grad_norm(cap.proposer) > 0
    assert grad_norm(m.prompt_extractor) > 0
    assert grad_norm(m.image_encoder.semantic_encoder) > 0             # shared features: both losses reach it
    assert grad_norm(m.language_model, lambda n: "lora_" in n) > 0
    assert all(p.grad is None for p in m.image_encoder.sam_encoder.parameters())   # frozen SAM
    assert all(p.grad is None for n, p in m.language_model.named_parameters() if "lora_" not in n)
    # the detection loss alone reaches the semantic encoder too (end to end)
    cap.zero_grad(set_to_none=True)
    cap(dc.densecap_collate([train_set[0]]))["det"].backward()
    assert grad_norm(m.image_encoder.semantic_encoder) > 0 and grad_norm(m.language_model) == 0


def test_predict_returns_boxes_in_original_pixels(tok):
    cap = make_captioner(tok, score_thr=0.0, max_det=3)
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[64, 128], [128, 128]])        # resized (h, w): the first one was 100×200, scale 0.64
    orig = torch.tensor([[100, 200], [128, 128]])
    out = cap.predict(images, sizes, orig, max_new_tokens=3)
    assert len(out) == 2
    for o, (h, w), scale in zip(out, orig.tolist(), (0.64, 1.0)):
        assert set(o) == {"boxes", "boxes_input", "scores", "captions"}
        n = len(o["boxes"])
        assert 0 < n <= 3 and o["boxes"].shape == (n, 4) and o["scores"].shape == (n,) and len(o["captions"]) == n
        assert all(isinstance(c, str) for c in o["captions"])
        assert torch.all(o["scores"][:-1] >= o["scores"][1:])
        assert torch.allclose(o["boxes"] * scale, o["boxes_input"], atol=1e-4)
        assert (o["boxes"][:, 0::2] <= w + 1e-3).all() and (o["boxes"][:, 1::2] <= h + 1e-3).all()
    assert (out[0]["boxes_input"][:, 1::2] <= 64 + 1e-4).all()         # clipped to the resized image
    assert torch.allclose(to_original_frame(torch.tensor([[32.0, 16.0, 64.0, 48.0]]), (100, 200), 128),
                          torch.tensor([[50.0, 25.0, 100.0, 75.0]]))


# ------------------------------------------------------------------------------------------- training
def small_config(tmp_path, **changes):
    """The SMOKE densecap config on the test-sized PixelLLM, in a run folder of its own (no init stages)."""
    from pixelllm.configs import get_config

    return get_config("densecap", smoke=True, overrides={
        "run_dir": str(tmp_path / "run"), "model_overrides": dict(SMALL_MODEL), "init_from": "", "device": "cpu",
        "batch_size": 2, "log_interval": 1, "ckpt_interval": 0, **changes})


def trainable(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def make_trainer(cfg, tok, dataset, out_dir):
    from pixelllm.engine.trainer import Trainer

    return Trainer(dc.build_densecap(cfg, tok, verbose=False), cfg, dataset, dc.densecap_collate, out_dir=out_dir,
                   progress=False)


def test_the_trainer_reduces_the_loss_caches_features_and_build_densecap_reloads_the_stage(tok, train_set, tmp_path):
    cfg = small_config(tmp_path, steps=8, lr=3e-3, warmup_steps=1, max_prompts_per_image=0)
    sub = torch.utils.data.Subset(train_set, range(2))
    batch = dc.densecap_collate([sub[0], sub[1]])
    tr = make_trainer(cfg, tok, sub, tmp_path / "ck")
    cap = tr.model
    assert cap.computes_own_loss and tr.own_loss and tr.cache is not None       # frozen SAM grid cached

    def loss():
        with torch.no_grad():
            return float(cap.eval()(batch)["loss"])

    before = loss()
    hist = tr.fit()
    assert len(hist) == 8 and loss() < before - 0.5
    assert tr.cache.hits > 0 and {"det", "ce", "prompts"} <= set(hist[0])
    assert (tmp_path / "ck" / "final.json").is_file() and len(list((tmp_path / "ck").glob("ckpt_*.pt"))) == 1
    # the stage reloaded from its checkpoint: the same weights (proposer + captioner trainable parts)
    fresh = dc.build_densecap(cfg, tok, checkpoint=tmp_path / "ck", verbose=False)
    assert not fresh.training
    for n, p in cap.state_dict().items():
        assert torch.equal(p, fresh.state_dict()[n]), n


@pytest.mark.parametrize("train_image_encoder", [True, False])
def test_resume_is_exact(tok, train_set, tmp_path, train_image_encoder):
    # one prompt per image drawn at random each step: the subset comes from the RNG the Trainer checkpoints
    cfg = small_config(tmp_path, steps=4, ckpt_interval=2, max_prompts_per_image=1,
                       train_image_encoder=train_image_encoder)
    sub = torch.utils.data.Subset(train_set, range(4))
    full = make_trainer(cfg, tok, sub, tmp_path / "a")
    full.fit()
    first = make_trainer(cfg, tok, sub, tmp_path / "b")
    first.fit(until=2)
    again = make_trainer(cfg, tok, sub, tmp_path / "b")
    assert again.resume() and again.step == 2
    again.fit()
    a, b = trainable(full.model), trainable(again.model)
    assert a.keys() == b.keys() and any(n.startswith("proposer.") for n in a)
    assert any(n.startswith("pixelllm.image_encoder.semantic_encoder.") for n in a) == train_image_encoder
    for n in a:
        assert torch.equal(a[n], b[n]), n
    assert [r["loss"] for r in full.history[2:]] == [r["loss"] for r in again.history]


def test_evaluation_plumbing_with_a_fake_meteor_gives_the_hand_map(tmp_path, tok):
    recs = [{"image_id": 7, "file_name": "x.jpg", "width": 200, "height": 100, "regions": [
        {"region_id": 1, "phrase": "red circle", "bbox": [0.0, 0.0, 20.0, 20.0]},
        {"region_id": 2, "phrase": "blue star", "bbox": [100.0, 50.0, 40.0, 40.0]}]}]
    gt = dc.DenseCapDataset(recs, tmp_path, tok, image_size=128).ground_truth()
    # detections as predict() returns them: input-frame boxes (scale 0.64) brought back to original pixels
    det_in = torch.tensor([[0.0, 0.0, 12.8, 12.8], [64.0, 32.0, 89.6, 57.6]])
    dets = [{"image_id": "7", "boxes": to_original_frame(det_in, (100, 200), 128).tolist(),
             "scores": [0.9, 0.8], "captions": ["red circle", "green square"]}]
    fake = lambda pairs: [1.0 if c in refs else 0.0 for c, refs in pairs]      # noqa: E731
    res = dc.evaluate_densecap(dets, gt, meteor_fn=fake)
    # records by score: (ok, IoU 1, METEOR 1) then (ok, IoU 1, METEOR 0); npos = 2.
    # caption APs: TP only the first (METEOR 0 is not > 0) → recall 0.5 at precision 1 → AP = 51/100
    # detection APs: both TP → AP = 1
    assert res["map"] == pytest.approx(0.51) and res["map_detection"] == pytest.approx(1.0)
    assert res["num_pos"] == 2 and res["num_detections"] == 2
