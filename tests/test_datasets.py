"""Tokenizer, resize/pad transform, the four task Datasets and collate (hand-computed values), plus a
round trip through the synthetic world."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixelllm.data.datasets import (
    CaptionDataset, LNTraceDataset, RefExpDataset, RegionCaptionDataset, ResizePad, collate,
)
from pixelllm.data.localized_narratives import parse_narrative


class WordTokenizer:
    """Whitespace tokenizer with EOS = 1 (ids are word lengths + 3), enough to check the plumbing."""
    eos_token_id = 1

    def __call__(self, text):
        return {"input_ids": [len(w) + 3 for w in text.split()] + [1]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pixelllm.data.synthetic import generate
    from pixelllm.data.tokenizer import corpus_texts, train_tokenizer

    root = tmp_path_factory.mktemp("world")
    generate(root, n_scenes=12, image_size=128, seed=0, workers=1, progress=False)
    texts = corpus_texts(root)
    tok = train_tokenizer(texts, root / "tokenizer", vocab_size=1000)
    return root, tok, texts


# ---------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_files_specials_and_sentinels(world):
    root, tok, _ = world
    d = root / "tokenizer"
    assert {p.name for p in d.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert (tok.pad_token, tok.pad_token_id, tok.eos_token, tok.eos_token_id, tok.unk_token, tok.unk_token_id) == \
        ("<pad>", 0, "</s>", 1, "<unk>", 2)
    n = len(tok)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == n - 1                 # T5 order: sentinel i = V-1-i
    assert tok.convert_tokens_to_ids("<extra_id_99>") == n - 100
    special = json.loads((d / "special_tokens_map.json").read_text())
    assert special["eos_token"] == "</s>" and len(special["additional_special_tokens"]) == 100


def test_tokenizer_round_trip_and_eos(world):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    root, tok, texts = world
    ids = tok("A big red circle, on the left.").input_ids
    assert ids[-1] == 1 and 2 not in ids
    assert tok.convert_ids_to_tokens(ids) == ["▁a", "▁big", "▁red", "▁circle", ",", "▁on", "▁the", "▁left", ".", "</s>"]
    assert tok.decode(ids, skip_special_tokens=True) == "a big red circle, on the left."
    for t in texts:
        enc = tok(t).input_ids
        assert tok.decode(enc, skip_special_tokens=True) == t.lower()
        assert 2 not in enc
    again = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    raw = Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json"))
    assert again(texts[0]).input_ids == raw.encode(texts[0]).ids == tok(texts[0]).input_ids
    words = {w.strip(".,") for t in texts for w in t.lower().split()}
    single = sum(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in words)
    assert single / len(words) > 0.9
    batch = tok(["a red", "a big red circle"], padding=True, return_tensors="pt")
    assert batch.input_ids[0].tolist()[-2:] == [0, 0] and batch.input_ids[0, 2] == 1


# ---------------------------------------------------------------------------------------- transform
def test_resize_pad_geometry_points_boxes_flip():
    t = ResizePad(64)
    assert t.geometry(50, 100) == (0.64, 32, 64)                             # h, w = 50, 100 → 32 × 64
    assert t.geometry(100, 50) == (0.64, 64, 32)
    np.testing.assert_allclose(t.points([[10.0, 20.0]], 50, 100), [[6.4, 12.8]])
    np.testing.assert_allclose(t.boxes([10.0, 20.0, 30.0, 40.0], 50, 100), [6.4, 12.8, 19.2, 25.6], rtol=1e-6)
    # flip in the resized frame (w' = 64): x → 64 − x, corners stay top-left / bottom-right
    np.testing.assert_allclose(t.boxes([10.0, 20.0, 30.0, 40.0], 50, 100, flip=True), [44.8, 12.8, 57.6, 25.6], rtol=1e-6)
    np.testing.assert_allclose(t.points([[10.0, 20.0]], 50, 100, flip=True), [[57.6, 12.8]], rtol=1e-6)


def test_resize_pad_image_and_mask():
    t = ResizePad(64)
    arr = np.zeros((50, 100, 3), np.uint8)
    arr[:, :50] = (255, 0, 0)                                                # left half red, right half blue
    arr[:, 50:] = (0, 0, 255)
    x = t.image(Image.fromarray(arr))
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert x[0, 10, 5] == 1.0 and x[2, 10, 60] == 1.0 and (x[:, 32:] == 0).all()   # content 32×64, zero padding
    xf = t.image(Image.fromarray(arr), flip=True)
    assert xf[2, 10, 5] == 1.0 and xf[0, 10, 60] == 1.0
    m = np.zeros((50, 100), np.uint8)
    m[10:20, 0:25] = 1
    mm = t.mask(m)
    assert mm.dtype == torch.bool and mm.shape == (64, 64)
    assert mm[7:12, 0:16].all() and mm.sum() == pytest.approx(0.64 ** 2 * 250, rel=0.15) and not mm[32:].any()
    assert t.mask(m, flip=True)[7:12, 48:64].all()


# ------------------------------------------------------------------------------------- LN dataset
def _ln_image(tmp_path, iid=5, size=(100, 50)):
    Image.new("RGB", size, (128, 64, 32)).save(tmp_path / f"{iid:012d}.jpg")


def _ln_narr():
    # x = 0.4 t, y = 0.5 on t ∈ [0, 2]; "a red" [0, 1] → box x ∈ [0, .4]; "circle" [1, 2] → x ∈ [.4, .8]
    return parse_narrative({"image_id": "5", "caption": "a red circle",
                            "timed_caption": [{"utterance": "a red", "start_time": 0, "end_time": 1},
                                              {"utterance": "circle", "start_time": 1, "end_time": 2}],
                            "traces": [[{"x": 0.4 * t, "y": 0.5, "t": t} for t in (0.0, 0.5, 1.0, 1.5, 2.0)]]})


def test_ln_trace_dataset_points_in_resized_pixels(tmp_path):
    _ln_image(tmp_path)
    ds = LNTraceDataset([_ln_narr()], tmp_path, WordTokenizer(), image_size=64, return_trace_samples=True)
    s = ds[0]
    assert s["task"] == "trace" and s["target_ids"].tolist() == [4, 6, 9, 1]
    # 3 tokens, 2 utterances → [0, 1, 1]; corners round(u·W) in the 100×50 original, then × 0.64
    exp = torch.tensor([[0, 16, 25.6, 16], [25.6, 16, 51.2, 16], [25.6, 16, 51.2, 16], [0, 0, 0, 0]])
    torch.testing.assert_close(s["points"], exp)
    assert s["point_valid"].tolist() == [True, True, True, False]             # EOS has no target
    assert s["image_sizes"].tolist() == [32, 64] and s["orig_sizes"].tolist() == [50, 100]
    assert s["boxes"].tolist() == [0, 0, 64, 32]
    assert s["trace_samples"].shape == (4, 16, 2)
    torch.testing.assert_close(s["trace_samples"][1, :, 0], torch.linspace(0.4, 0.8, 16))
    # flipped: x → 64 − x, samples x → 1 − x
    f = LNTraceDataset([_ln_narr()], tmp_path, WordTokenizer(), image_size=64, return_trace_samples=True,
                       hflip_prob=1.0)[0]
    torch.testing.assert_close(f["points"][0], torch.tensor([38.4, 16, 64, 16]))
    torch.testing.assert_close(f["trace_samples"][1, :, 0], 1 - torch.linspace(0.4, 0.8, 16))
    # truncation keeps EOS last and drops the trailing token targets
    t = LNTraceDataset([_ln_narr()], tmp_path, WordTokenizer(), image_size=64, max_target_len=3)[0]
    assert t["target_ids"].tolist() == [4, 6, 1] and t["point_valid"].tolist() == [True, True, False]
    # point_target="center": utterance 0 centre (0.2, 0.5) → round(20, 25) · 0.64
    c = LNTraceDataset([_ln_narr()], tmp_path, WordTokenizer(), image_size=64, point_target="center")[0]
    torch.testing.assert_close(c["points"][0], torch.tensor([12.8, 16, 12.8, 16]))


# ------------------------------------------------------------------------------------- collate
def test_collate_pads_and_mixes_tasks(tmp_path):
    _ln_image(tmp_path)
    ln = LNTraceDataset([_ln_narr()], tmp_path, WordTokenizer(), image_size=64, return_trace_samples=True)
    rc = RegionCaptionDataset([{"image_id": 5, "file_name": "000000000005.jpg", "regions": [
        {"region_id": 1, "phrase": "red", "bbox": [10, 20, 20, 20]}]}], tmp_path, WordTokenizer(), image_size=64)
    b = collate([rc[0], ln[0]])
    assert b["task"] == ["region_caption", "trace"] and b["image_ids"] == ["5", "5"]
    assert b["target_ids"].tolist() == [[6, 1, 0, 0], [4, 6, 9, 1]]
    assert b["target_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert b["prompt_ids"].shape == (2, 5) and b["prompt_ids"][0].tolist() == [5, 9, 5, 1, 0]  # "an object of" + EOS
    assert b["prompt_mask"][1].tolist() == [True] * 5
    assert b["points"].shape == (2, 4, 4) and not b["point_valid"][0].any()
    assert b["trace_samples"].shape == (2, 4, 16, 2) and (b["trace_samples"][0] == 0).all()
    torch.testing.assert_close(b["boxes"][0], torch.tensor([6.4, 12.8, 19.2, 25.6]))   # region prompt box
    assert b["boxes"][1].tolist() == [0, 0, 64, 32]                                      # whole image
    assert b["images"].shape == (2, 3, 64, 64) and b["image_sizes"].dtype == torch.long
    assert collate([rc[0]], pad_id=7)["target_ids"].tolist() == [[6, 1]]
    with pytest.raises(ValueError):
        collate([])


# ------------------------------------------------------------------------ synthetic world round trip
def test_datasets_on_the_synthetic_world(world):
    from pixelllm.data.refcoco import RefCOCO
    from pixelllm.data.visual_genome import load_visual_genome

    root, tok, _ = world
    img = root / "images"
    scenes = {s["image_id"]: s for s in json.loads((root / "scenes.json").read_text())["images"]}
    ln = LNTraceDataset(root / "localized_narratives" / "synthetic_train_localized_narratives.jsonl", img, tok,
                        image_size=64)
    b = collate([ln[i] for i in range(len(ln))])
    lengths = b["target_mask"].sum(1)
    assert (b["point_valid"].sum(1) == lengths - 1).all()                     # every token but EOS
    assert (b["points"][..., 0::2] <= 64).all() and (b["points"] >= 0).all()
    assert (b["points"][..., 2] >= b["points"][..., 0]).all() and (b["points"][..., 3] >= b["points"][..., 1]).all()
    ref = RefCOCO(root)
    rd = RefExpDataset(ref, img, tok, split="train", image_size=64, return_masks=True)
    for i in range(3):
        s, r = rd[i], rd.records[i]
        assert tok.decode(s["prompt_ids"], skip_special_tokens=True) == f"where is {r['expression']}"
        assert tok.decode(s["target_ids"], skip_special_tokens=True) == r["expression"]
        assert s["point_valid"].tolist() == [False] * (len(s["target_ids"]) - 1) + [True]
        x, y, w, h = next(o["bbox"] for o in scenes[r["image_id"]]["objects"] if o["id"] == r["ann_id"])
        torch.testing.assert_close(s["points"][-1], torch.tensor([x, y, x + w, y + h]) * 0.5)
        assert s["masks"].sum() > 0
    empty = RefExpDataset(ref, img, tok, split="val", target="", image_size=64)[0]
    assert empty["target_ids"].tolist() == [1] and empty["point_valid"].tolist() == [True]
    vg = load_visual_genome(root / "vg" / "region_descriptions.json", root / "vg" / "image_data.json")
    rc = RegionCaptionDataset(vg, img, tok, image_size=64)
    assert len(rc) == sum(len(r["regions"]) for r in vg) and rc[0]["task"] == "region_caption"
    rr = RegionCaptionDataset(ref, img, tok, image_size=64)
    assert len(rr) == len(ref)
    cd = CaptionDataset(root / "captions" / "captions_train.json", img, tok, image_size=64)
    assert len(cd) == 5 * len(cd.records) and not cd[0]["point_valid"].any()
    assert tok.decode(cd[0]["prompt_ids"], skip_special_tokens=True) == "a short image caption:"
    assert cd.missing_images() == [] and rd.missing_images() == []


def test_decoded_image_cache_gives_identical_samples(world, tmp_path):
    """enable_image_cache: the same tensors as decoding each time (flip included), one decode per file, one
    store shared by a mixture's datasets and reached through Subset."""
    from torch.utils.data import Subset

    from pixelllm.data.datasets import enable_image_cache
    from pixelllm.engine.datasets import MixtureDataset

    root, tok, _ = world
    img = root / "images"
    ln = root / "localized_narratives" / "synthetic_train_localized_narratives.jsonl"
    caps = root / "captions" / "captions_train.json"
    plain = [LNTraceDataset(ln, img, tok, image_size=64), CaptionDataset(caps, img, tok, image_size=64)]
    cached = [LNTraceDataset(ln, img, tok, image_size=64), CaptionDataset(caps, img, tok, image_size=64)]
    mix = MixtureDataset({"trace": Subset(cached[0], range(len(cached[0]))), "caption": cached[1]},
                         {"trace": 1.0, "caption": 1.0})
    store = enable_image_cache(mix)
    assert cached[0].decoded is store and cached[1].decoded is store and plain[0].decoded is None
    for _ in range(2):                                                        # 2nd pass: all hits
        for p, c in zip(plain, cached):
            for i in range(len(p)):
                a, b = p[i], c[i]
                assert torch.equal(a["images"], b["images"]) and torch.equal(a["points"], b["points"])
                assert torch.equal(a["image_sizes"], b["image_sizes"]) and torch.equal(a["orig_sizes"], b["orig_sizes"])
    files = {p.image_path(r) for p in plain for r in p._image_records()}
    assert len(store) == store.misses == len(files)
    assert store.hits == 2 * sum(len(p) for p in plain) - len(files)
    assert len(cached[0].aligned) == len(cached[0]) and plain[0].aligned == {}
    flipped = RegionCaptionDataset(refcoco_records(root), img, tok, image_size=64, hflip_prob=1.0)
    ref = [flipped[i]["images"] for i in range(3)]
    enable_image_cache(flipped)
    for i in range(3):
        assert torch.equal(flipped[i]["images"], ref[i]) and torch.equal(flipped[i]["images"], ref[i])


def refcoco_records(root):
    from pixelllm.data.refcoco import RefCOCO

    return RefCOCO(root)


# ------------------------------------------------------------------------------- length grouping
def test_target_length_matches_the_samples(world):
    """``target_length(i)`` (no image loaded) is ``len(ds[i]["target_ids"])`` for every task dataset, and
    ``sample_lengths`` finds it through Subset, ConcatDataset and the task mixture."""
    from torch.utils.data import ConcatDataset, Subset

    from pixelllm.data.refcoco import RefCOCO
    from pixelllm.data.visual_genome import load_visual_genome
    from pixelllm.engine.datasets import MixtureDataset, sample_lengths

    root, tok, _ = world
    img = root / "images"
    ln = LNTraceDataset(root / "localized_narratives" / "synthetic_train_localized_narratives.jsonl", img, tok,
                        image_size=64, max_target_len=24)                    # some narratives are cut
    cd = CaptionDataset(root / "captions" / "captions_train.json", img, tok, image_size=64)
    rd = RefExpDataset(RefCOCO(root), img, tok, split="train", image_size=64)
    vg = load_visual_genome(root / "vg" / "region_descriptions.json", root / "vg" / "image_data.json")
    rc = RegionCaptionDataset(vg, img, tok, image_size=64)
    for ds in (ln, cd, rd, rc):
        want = [len(ds[i]["target_ids"]) for i in range(min(len(ds), 12))]
        assert [ds.target_length(i) for i in range(len(want))] == want
    assert max(ln.target_length(i) for i in range(len(ln))) == 24
    mix = MixtureDataset({"trace": ln, "caption": Subset(cd, range(7))}, {"trace": 2.0, "caption": 1.0}, seed=3)
    got = sample_lengths(mix)
    assert len(got) == len(mix) and got == [len(mix[i]["target_ids"]) for i in range(len(mix))]
    assert sample_lengths(ConcatDataset([rd, rc])) == [rd.target_length(i) for i in range(len(rd))] + \
        [rc.target_length(i) for i in range(len(rc))]
    with pytest.raises(TypeError, match="group_by_length=False"):
        sample_lengths(list(range(3)))


def test_length_grouped_sampler_order_padding_ranks_and_resume():
    from pixelllm.engine.trainer import ResumableSampler

    rng = np.random.default_rng(0)
    lengths = np.where(rng.random(1000) < 0.5, rng.integers(5, 15, 1000), rng.integers(30, 90, 1000)).tolist()
    data = list(range(1000))
    b = 8
    s = ResumableSampler(data, seed=1, lengths=lengths, batch_size=b)
    s.set_epoch(0)
    order = list(s)
    assert sorted(order) == data                                                  # each sample once (1000 = 125·8)
    s.set_epoch(0)
    assert list(s) == order                                                       # seeded
    s.set_epoch(1)
    assert list(s) != order                                                       # a new order per epoch

    def padded(o):                                                                # tokens of the padded batches
        return sum(max(lengths[i] for i in o[k:k + b]) * b for k in range(0, len(o) - b + 1, b))

    plain = ResumableSampler(data, seed=1)
    plain.set_epoch(0)
    assert padded(order) < 0.75 * padded(list(plain))
    # batches are not in long-to-short blocks: the long half of the batches is spread over the epoch
    long_batch = [max(lengths[i] for i in order[k:k + b]) >= 30 for k in range(0, 1000, b)]
    assert 0.3 < np.mean(long_batch[:40]) < 0.8
    # two ranks: the union of their k-th batches of 4 is the k-th batch of 8 of one process
    ranks = []
    for r in range(2):
        sr = ResumableSampler(data, num_replicas=2, rank=r, seed=1, lengths=lengths, batch_size=4)
        sr.set_epoch(0)
        ranks.append(list(sr))
    for k in range(0, 500, 4):
        assert sorted(ranks[0][k:k + 4] + ranks[1][k:k + 4]) == sorted(order[2 * k:2 * k + 8])
    # resuming 24 samples into the epoch continues the same order
    s.set_epoch(0, start=24)
    assert list(s) == order[24:]
    with pytest.raises(ValueError, match="3 lengths for 1000 samples"):
        ResumableSampler(data, lengths=[1, 2, 3])
