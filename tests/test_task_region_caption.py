"""Location-conditioned captioning (PAPER_NOTES.md §3): the ground-truth box is the location prompt, the text
prompt "an object of", the loss the caption CE only; records with bad boxes are clipped/skipped and
counted; evaluation captions every distinct box once against all its phrases.

The tiny world / tokenizer / model fixtures here are reused by test_task_densecap.py.
"""
from __future__ import annotations

import pytest
import torch

from pixelllm.data.datasets import collate
from pixelllm.data.errors import SkipCounter
from pixelllm.tasks import region_caption as rc
from conftest import make_test_model

torch.set_num_threads(1)

# Small widths (big_vision `_make_test_model(**overrides)` style), as tests/test_modeling.py.


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pixelllm.data.synthetic import generate

    root = tmp_path_factory.mktemp("world") / "data"
    generate(root, n_scenes=8, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def tok(world, tmp_path_factory):
    from pixelllm.data.tokenizer import corpus_texts, train_tokenizer

    return train_tokenizer(corpus_texts(world), tmp_path_factory.mktemp("tok"), vocab_size=200, num_sentinels=4)


def make_model(tok, seed: int = 0):
    from pixelllm.modeling.build import build_pixelllm

    torch.manual_seed(seed)
    return make_test_model(seed=None, eval=False, tokenizer=tok)


@pytest.fixture(scope="module")
def model(tok):
    return make_model(tok).eval()


# ------------------------------------------------------------------------------------------------ data
def test_samples_carry_the_ground_truth_box_in_the_resized_frame(world, tok):
    # 128-px images into a 64-px input: scale 0.5; the VG bbox (x, y, w, h) → (x0, y0, x1, y1) · 0.5
    ds = rc.region_caption_dataset(world, "vg", "train", tok, image_size=64)
    rec, bbox, phrase, _ = ds.items[0]
    s = ds[0]
    x, y, w, h = bbox
    assert torch.allclose(s["boxes"], torch.tensor([x, y, x + w, y + h]) * 0.5)
    assert s["task"] == "region_caption"
    assert tok.decode(s["prompt_ids"], skip_special_tokens=True) == "an object of"
    assert tok.decode(s["target_ids"], skip_special_tokens=True) == phrase.lower()
    assert not s["point_valid"].any()                                       # point outputs ignored


def test_refer_boxes_are_clipped_or_skipped_and_counted():
    recs = [dict(ref_id=1, sent_id=1, width=100, height=50, bbox=[90.0, 10.0, 20.0, 10.0], expression="a"),  # clip
            dict(ref_id=2, sent_id=2, width=100, height=50, bbox=[10.0, 10.0, 0.0, 5.0], expression="b"),    # w = 0
            dict(ref_id=3, sent_id=3, width=100, height=50, bbox=[120.0, 10.0, 5.0, 5.0], expression="c"),   # outside
            dict(ref_id=4, sent_id=4, width=100, height=50, bbox=[1.0, 2.0, 3.0, 4.0], expression="d")]
    skips = SkipCounter("t")
    out = rc.clean_refer_records(recs, skips)
    assert [r["ref_id"] for r in out] == [1, 4]
    assert out[0]["bbox"] == [90.0, 10.0, 10.0, 10.0] and out[1]["bbox"] == [1.0, 2.0, 3.0, 4.0]
    assert skips.counts == {"clipped: box partly outside the image": 1,
                            "skipped: box with width or height <= 0": 1, "skipped: box outside the image": 1}


def test_region_items_pool_the_sentences_of_one_box(world, tok):
    ds = rc.region_caption_dataset(world, "refcocog", "train", tok, image_size=128)
    items = rc.region_items(ds)
    by_ref: dict = {}
    for rec, _bbox, expr, ref_id in ds.items:
        by_ref.setdefault(ref_id, []).append(expr)
    assert len(items) == len(by_ref) < len(ds)                             # several sentences per ref
    for it in items:
        rec, _, _, ref_id = ds.items[it["index"]]
        assert it["references"] == by_ref[ref_id]


# ----------------------------------------------------------------------------------------------- model
def test_the_box_prompt_drives_the_visual_tokens_and_the_caption_loss(world, tok, model):
    from pixelllm.modeling.losses import pixelllm_loss

    ds = rc.region_caption_dataset(world, "vg", "train", tok, image_size=model.image_size)
    b = collate([ds[i] for i in range(3)])
    with torch.no_grad():
        v1, _ = model.visual_tokens(b["images"], b["boxes"], b["image_sizes"])
        v_same, _ = model.visual_tokens(b["images"], b["boxes"].clone(), b["image_sizes"])
        moved = b["boxes"] + torch.tensor([20.0, 10.0, 20.0, 10.0])
        v2, _ = model.visual_tokens(b["images"], moved, b["image_sizes"])
        v_whole, _ = model.visual_tokens(b["images"], None, b["image_sizes"])
        e1, _ = model.encoder_inputs(v1, b["prompt_ids"], b["prompt_mask"])
        e2, _ = model.encoder_inputs(v2, b["prompt_ids"], b["prompt_mask"])
        out = model(b["images"], b["boxes"], b["prompt_ids"], b["prompt_mask"], b["target_ids"], b["target_mask"],
                    b["image_sizes"])
        out2 = model(b["images"], moved, b["prompt_ids"], b["prompt_mask"], b["target_ids"], b["target_mask"],
                     b["image_sizes"])
    assert torch.equal(v1, v_same)
    n = model.config.num_queries
    assert (v1 - v2).abs().amax(dim=(1, 2)).min() > 1e-4                   # every row sees its box
    assert (v1 - v_whole).abs().amax() > 1e-4
    assert (e1[:, :n] - e2[:, :n]).abs().amax() > 1e-4                     # visual part of the T5 input moves
    assert torch.equal(e1[:, n:], e2[:, n:])                               # prompt words do not
    l1 = pixelllm_loss(out.logits, out.points, b)
    l2 = pixelllm_loss(out2.logits, out2.points, b)
    assert int(l1["n_points"]) == 0 and float(l1["point_l1"]) == 0.0       # caption loss only
    assert float(l1["loss"]) == pytest.approx(float(l1["ce"]))
    assert float(l1["ce"]) != pytest.approx(float(l2["ce"]), abs=1e-6)


def test_caption_regions_and_metrics_with_a_fake_meteor(world, tok, model):
    ds = rc.region_caption_dataset(world, "vg", "val", tok, image_size=model.image_size)
    res = rc.caption_regions(model, ds, tok, limit=3, max_new_tokens=4, progress=False)
    assert [r["key"] for r in res] == [it["key"] for it in rc.region_items(ds)[:3]]
    for r in res:
        s = ds[r["index"]]
        assert r["box_input"] == s["boxes"].tolist() and isinstance(r["text"], str)

    class FakeMeteor:   # the Meteor.compute interface: (corpus score, per-item scores)
        def compute(self, pairs):
            return 0.25, [0.25] * len(pairs)

    perfect = [{**r, "text": r["references"][0]} for r in res]
    m = rc.score_region_captions(perfect, meteor=FakeMeteor())
    assert m["METEOR"] == 0.25 and m["ROUGE-L"] == pytest.approx(1.0) and m["num_items"] == 3
    assert set(m) >= {"BLEU-4", "CIDEr-D"}


def test_a_few_steps_reduce_the_caption_loss(world, tok, tmp_path):
    from pixelllm.configs.loc_caption import get_config
    from pixelllm.engine.trainer import Trainer

    m = make_model(tok, seed=1)
    ds = rc.region_caption_dataset(world, "vg", "train", tok, image_size=m.image_size)
    sub = torch.utils.data.Subset(ds, range(4))
    b = collate([sub[i] for i in range(4)])
    cfg = get_config(smoke=True)
    cfg.batch_size, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.device = 4, 8, 3e-3, 1, "cpu"

    def loss():
        from pixelllm.modeling.losses import pixelllm_loss
        with torch.no_grad():
            o = m.eval()(b["images"], b["boxes"], b["prompt_ids"], b["prompt_mask"], b["target_ids"],
                         b["target_mask"], b["image_sizes"])
        return float(pixelllm_loss(o.logits, o.points, b)["loss"])

    before = loss()
    Trainer(m.train(), cfg, sub, collate, out_dir=None, progress=False).fit()
    assert loss() < before - 0.5


def loc_caption_config(**changes):
    from pixelllm.configs import get_config

    return get_config("loc_caption", smoke=True, overrides={"device": "cpu", "log_interval": 1, **changes})


def test_a_frozen_image_encoder_is_cached_whole_and_only_the_prompt_path_trains(world, tok):
    from pixelllm.engine.trainer import Trainer

    ds = rc.region_caption_dataset(world, "vg", "train", tok, image_size=128)
    b = collate([ds[i] for i in range(2)])
    args = (b["images"], b["boxes"], b["prompt_ids"], b["prompt_mask"], b["target_ids"], b["target_mask"], b["image_sizes"])
    model = rc.freeze_for_loc_caption(make_model(tok), train_image_encoder=False).eval()
    with torch.no_grad():
        feats = model.frozen_image_features(b["images"], b["image_sizes"])      # what the Trainer caches
        out = model(*args, features=feats)
        expected = model(*args)
    assert feats.shape[1] == model.image_encoder.out_channels                # the whole grid, not only SAM
    assert torch.allclose(out.logits, expected.logits, atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("prompt_extractor.", "language_model.")) for n in trainable)
    # the Trainer caches it: after the first epoch every image is a hit
    tr = Trainer(model, loc_caption_config(steps=4, batch_size=2, max_samples=0), torch.utils.data.Subset(ds, range(4)),
                 collate, out_dir=None, progress=False)
    assert tr.cache is not None
    tr.fit()
    assert tr.cache.hits > 0 and tr.cache.misses <= 4
    assert not model.image_encoder.training                                  # wholly frozen: kept in eval mode
    # trainable image encoder (the paper's setting): only the frozen SAM grid is cacheable
    full = rc.freeze_for_loc_caption(make_model(tok), train_image_encoder=True)
    assert any(p.requires_grad for p in full.image_encoder.parameters())
    assert not any(p.requires_grad for p in full.trace_head.parameters())


def test_resume_is_exact(world, tok, tmp_path):
    from pixelllm.engine.trainer import Trainer

    ds = torch.utils.data.Subset(rc.region_caption_dataset(world, "vg", "train", tok, image_size=128), range(8))
    cfg = loc_caption_config(steps=4, batch_size=2, ckpt_interval=2, max_samples=0)

    def trainer(out):
        model = rc.freeze_for_loc_caption(make_model(tok), cfg.train_image_encoder)
        return Trainer(model, cfg, ds, collate, out_dir=out, progress=False)

    full = trainer(tmp_path / "a")
    full.fit()
    first = trainer(tmp_path / "b")
    first.fit(until=2)
    again = trainer(tmp_path / "b")
    assert again.resume() and again.step == 2
    again.fit()
    a = {n: p for n, p in full.model.named_parameters() if p.requires_grad}
    b = dict(again.model.named_parameters())
    for n, p in a.items():
        assert torch.equal(p, b[n]), n
    assert [r["loss"] for r in full.history[2:]] == [r["loss"] for r in again.history]


def test_one_text_prompt_per_source_in_training_and_evaluation(world, tok, model, monkeypatch):
    from pixelllm.configs import get_config
    from pixelllm.engine.paths import resolve_paths

    cfg = get_config("loc_caption", smoke=True, overrides={
        "data_dir": str(world), "prompts": {"region_caption": "an object of",
                                            "region_caption:refcocog": "a referring expression for"}})
    assert rc.source_prompt(cfg, "vg") == "an object of"
    assert rc.source_prompt(cfg, "refcocog") == "a referring expression for"
    one = get_config("loc_caption", smoke=True, overrides={"prompts": {"region_caption": "an object of"}})
    assert rc.source_prompt(one, "refcocog") == "an object of"                          # one prompt for all
    assert rc.source_prompt(get_config("loc_caption"), "refcocog") == "a referring expression for"   # of record
    paths = resolve_paths(cfg)
    train = rc.loc_caption_train_dataset(cfg, paths, tok, model.image_size)
    prompts = {k: tok.decode(d.dataset[0]["prompt_ids"] if hasattr(d, "dataset") else d[0]["prompt_ids"],
                             skip_special_tokens=True) for k, d in train.datasets.items()}
    assert prompts == {"vg": "an object of", "refcocog": "a referring expression for"}
    ev = rc.eval_datasets(cfg, paths, tok, model.image_size)
    assert ev["refcocog"].prompt == "a referring expression for" and ev["vg"].prompt == "an object of"
    seen = []
    orig = type(model).caption

    def spy(self, *a, prompt=None, **kw):
        seen.append(prompt)
        return orig(self, *a, prompt=prompt, **kw)

    monkeypatch.setattr(type(model), "caption", spy)
    rc.caption_regions(model, ev["refcocog"], tok, limit=2, max_new_tokens=2, progress=False)
    rc.caption_regions(model, ev["refcocog"], tok, prompt="an object of", limit=2, max_new_tokens=2, progress=False)
    assert seen == ["a referring expression for", "an object of"]
