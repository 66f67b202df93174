"""``data_prep.convert`` (your own folder → the repo's formats) and ``data_prep.trace_sim`` (mouse traces):
converted files load through the repo's readers with the same captions, boxes, masks and word timing; bad
records stop with file:line:field errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_prep.convert import assign_splits, convert, main
from data_prep.trace_sim import phrase_word_indices, simulate_trace, word_spans
from pixelllm.data.coco import CocoInstances, load_coco_captions
from pixelllm.data.errors import DataFormatError
from pixelllm.data.localized_narratives import align_tokens_to_trace, load_localized_narratives
from pixelllm.data.refcoco import RefCOCO
from pixelllm.data.visual_genome import load_visual_genome


def make_folder(root, n=5):
    """n images (sizes vary) with captions, simulated traces, regions, box and mask expressions."""
    (root / "imgs").mkdir(parents=True)
    recs = []
    for i in range(n):
        w, h = 96 + 8 * i, 80
        Image.new("RGB", (w, h), (120, 120, 118)).save(root / "imgs" / f"p{i}.png")
        box = [10.0 + i, 12.0, 40.0 + i, 50.0]
        caption = f"In this picture there is a red moon number {i} on the left."
        tr = simulate_trace(caption, {"red moon": box}, w, h, seed=i)
        mask = np.zeros((h, w), np.uint8)
        mask[20:30, 50:70] = 255
        Image.fromarray(mask).save(root / "imgs" / f"m{i}.png")
        recs.append({"image": f"imgs/p{i}.png", "caption": caption, "trace": tr.to_list(4),
                     "regions": [{"box": box, "phrase": "a red moon"}],
                     "expressions": [{"box": box, "text": "the red moon", "category": "moon"},
                                     {"box": box, "text": "moon on the left", "category": "moon"},
                                     {"mask": f"imgs/m{i}.png", "text": "the grey patch"}],
                     **({"split": "val"} if i == 0 else {})})
    (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


def test_round_trip_through_the_readers(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    recs = make_folder(src)
    stats = convert(src, out, split_fractions=(0.6, 0.2, 0.2), seed=3)
    assert stats["images"][0]["split"] == "val"                       # the record's own split wins
    assert sum(stats["splits"].values()) == 5 and stats["objects"] == 10 and stats["expressions"] == 15
    split_of = {e["image_id"]: e["split"] for e in stats["images"]}
    caps, ln_all = {}, {}
    for sp in ("train", "val", "test"):
        for r in load_coco_captions(out / "captions" / f"captions_{sp}.json"):
            caps[r["image_id"]] = (sp, r["captions"], r["width"])
        for n in load_localized_narratives(out / "localized_narratives" / f"own_{sp}_localized_narratives.jsonl"):
            ln_all[int(n.image_id)] = n
    assert {i: c[0] for i, c in caps.items()} == split_of
    for i, rec in enumerate(recs, start=1):
        assert caps[i][1] == [rec["caption"]] and caps[i][2] == 96 + 8 * (i - 1)
        n = ln_all[i]
        assert n.caption == rec["caption"] and [u.utterance for u in n.timed_caption] == rec["caption"].split()
        pts = np.array(rec["trace"])
        np.testing.assert_allclose(n.trace_points()[:, 0] * caps[i][2], pts[:, 0], atol=1e-3)
        # the derived word timing is the simulator's speaking model
        tr = simulate_trace(rec["caption"], {"red moon": rec["regions"][0]["box"]}, caps[i][2], 80, seed=i - 1)
        got = np.array([[u.start_time, u.end_time] for u in n.timed_caption])
        np.testing.assert_allclose(got, tr.word_times, atol=2e-4)
        with Image.open(out / "images" / f"{i:012d}.jpg") as im:
            assert im.size == (caps[i][2], 80) and im.mode == "RGB"
    # COCO instances + refer: boxes and masks survive; two expressions of one object make one ref
    ref = RefCOCO(out, "refcoco")
    assert len(ref.refs) == 10 and len(ref) == 15
    moon = [r for r in ref.records if r["expression"] == "the red moon" and r["image_id"] == 2][0]
    assert moon["bbox"] == [11.0, 12.0, 30.0, 38.0]
    assert sorted(s["raw"] for s in ref.refs[2]["sentences"]) == ["moon on the left", "the red moon"]
    patch = [r for r in ref.records if r["expression"] == "the grey patch" and r["image_id"] == 2][0]
    inst = CocoInstances(out / "refcoco" / "instances.json")
    m = inst.mask(patch["ann_id"])
    assert m.shape == (80, 104) and m.sum() == 200 and m[20:30, 50:70].all()
    assert patch["bbox"] == [50.0, 20.0, 20.0, 10.0]
    assert inst.categories == {1: "moon", 2: "object"}
    # Visual Genome regions, with the splits
    vg = load_visual_genome(out / "vg" / "region_descriptions.json", out / "vg" / "image_data.json",
                            splits=out / "vg" / "densecap_splits.json")
    assert {r["image_id"]: r["split"] for r in vg} == split_of
    assert vg[0]["regions"][0] == {"region_id": 1, "phrase": "a red moon", "bbox": [10.0, 12.0, 30.0, 38.0]}


def test_converted_trace_points_at_the_named_object(tmp_path):
    """Through the official alignment, the tokens of "moon" get targets inside the moon's box."""
    src, out = tmp_path / "src", tmp_path / "out"
    recs = make_folder(src, n=1)
    convert(src, out)
    n = load_localized_narratives(out / "localized_narratives" / "own_val_localized_narratives.jsonl")[0]
    words = n.caption.split()
    aligned = align_tokens_to_trace(n, len(words))                    # one token per word
    k = words.index("moon")
    x0, y0, x1, y1 = recs[0]["regions"][0]["box"]
    cx, cy = aligned.points[k, [0, 2]].mean() * 96, aligned.points[k, [1, 3]].mean() * 80
    assert x0 <= cx <= x1 and y0 <= cy <= y1


def test_refuses_a_non_empty_out_and_bad_records(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_folder(src, n=2)
    out.mkdir()
    (out / "x").write_text("keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(src, out)
    convert(src, out, overwrite=True)
    assert (out / "x").read_text() == "keep"
    ann = src / "ann.jsonl"
    lines = ann.read_text().splitlines()
    cases = [
        (lambda r: r["regions"][0].__setitem__("box", [40, 12, 10, 50]), "regions[0].box", "x1 > x0"),
        (lambda r: r["regions"][0].__setitem__("box", [500, 12, 600, 50]), "regions[0].box", "outside"),
        (lambda r: r.__setitem__("caption", "  "), "caption", "empty text"),
        (lambda r: r.__setitem__("image", "imgs/nope.png"), "image", "does not exist"),
        (lambda r: r["trace"].__setitem__(3, [1, 2]), "trace[3]", "expected [x, y, t]"),
        (lambda r: r["expressions"][0].__setitem__("mask", "imgs/m1.png"), "expressions[0]", "exactly one"),
        (lambda r: r["expressions"][2].__setitem__("mask", "imgs/m0.png"), "expressions[2].mask", "is 96×80"),
        (lambda r: r["expressions"][2].__setitem__("mask", [[0, 0, 0, 0, 0, 0]]), "expressions[2].mask", "empty"),
        (lambda r: r.__setitem__("split", "testA"), "split", "expected one of"),
        (lambda r: r.__setitem__("boxes", []), "boxes", "unknown field"),
    ]
    for change, fld, msg in cases:
        rec = json.loads(lines[1])
        change(rec)
        ann.write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
        with pytest.raises(DataFormatError) as e:
            convert(src, tmp_path / "o2")
        assert e.value.line == 2 and e.value.field == fld and msg in str(e.value), str(e.value)
        assert str(e.value).startswith(f"{ann}:2: field {fld!r}")
        assert not (tmp_path / "o2").exists()                         # nothing written
    ann.write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(SystemExit, match="already used on line 1"):
        main(["--src", str(src), "--out", str(tmp_path / "o3")])


def test_seeded_splits():
    a = assign_splits(20, (0.5, 0.25, 0.25), seed=1)
    assert a == assign_splits(20, (0.5, 0.25, 0.25), seed=1) != assign_splits(20, (0.5, 0.25, 0.25), seed=2)
    assert [a.count(s) for s in ("train", "val", "test")] == [10, 5, 5]
    fixed = assign_splits(4, (1.0, 0.0, 0.0), seed=0, fixed=["test", None, None, "val"])
    assert fixed == ["test", "train", "train", "val"]
    with pytest.raises(ValueError, match="summing to 1"):
        assign_splits(3, (0.5, 0.5, 0.5), seed=0)


def test_trace_simulator_dwells_in_the_named_box():
    caption = "a big blue moon on the left and a small red square at the top"
    boxes = {"big blue moon": (5, 40, 45, 90), "small red square": (60, 5, 90, 30)}
    tr = simulate_trace(caption, boxes, 128, 128, seed=0)
    words = caption.split()
    assert tr.points.shape[1] == 3 and np.all(np.diff(tr.points[:, 2]) > 0) and tr.points[0, 2] == 0
    np.testing.assert_allclose(word_spans(words, 0.0, tr.points[-1, 2]), tr.word_times)
    assert tr.word_box.tolist() == [-1, 0, 0, 0, -1, -1, -1, -1, -1, 1, 1, 1, -1, -1, -1]
    for k, (name, (x0, y0, x1, y1)) in enumerate(boxes.items()):
        idx = np.nonzero(tr.word_box == k)[0]
        t0, t1 = tr.word_times[idx[0], 0], tr.word_times[idx[-1], 1]
        p = tr.points[(tr.points[:, 2] >= t0) & (tr.points[:, 2] <= t1)]
        inside = (p[:, 0] >= x0 - 2) & (p[:, 0] <= x1 + 2) & (p[:, 1] >= y0 - 2) & (p[:, 1] <= y1 + 2)
        assert len(p) >= 5 and inside.all(), name
    # a longer word takes longer; an absent phrase is an error
    d = tr.word_times[:, 1] - tr.word_times[:, 0]
    assert d[words.index("square")] > d[words.index("a")]
    with pytest.raises(ValueError, match="does not occur"):
        simulate_trace(caption, {"green star": (0, 0, 9, 9)}, 128, 128)
    assert phrase_word_indices(["A", "moon,", "a", "moon"], "a moon", used={0, 1}) == [2, 3]


def test_own_data_config_reads_the_converted_folder(tmp_path):
    """``get_config("own_data")`` + ``data_dir=OUT`` finds convert's LN files and its images: the training
    samples carry the caption's tokens and point targets inside the image."""
    from pixelllm.configs import get_config
    from pixelllm.data.tokenizer import build_tokenizer, save_tokenizer, load_tokenizer
    from pixelllm.engine.datasets import task_dataset
    from pixelllm.engine.paths import resolve_paths

    src, out = tmp_path / "src", tmp_path / "out"
    recs = make_folder(src, n=4)
    convert(src, out, split_fractions=(1.0, 0.0, 0.0))
    save_tokenizer(build_tokenizer([r["caption"] for r in recs], vocab_size=80), tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    cfg = get_config("own_data", smoke=True, overrides={"data_dir": str(out), "tokenizer_dir": str(tmp_path / "tok")})
    assert cfg.init_from == "ln_trace" and cfg.tasks == {"trace": 1.0} and cfg.stage == "own_data"
    ds = task_dataset("trace", "train", cfg, resolve_paths(cfg), tok, 64)
    assert len(ds) == 3                                              # line 1 fixed its split to val
    s = ds[0]
    assert tok.decode(s["target_ids"], skip_special_tokens=True).replace(" ", "") == \
        recs[1]["caption"].lower().replace(" ", "")
    assert s["point_valid"].any() and s["images"].shape == (3, 64, 64)
    assert float(s["points"][s["point_valid"].bool()].max()) <= 64
