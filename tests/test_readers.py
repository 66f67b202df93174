"""Readers of the real formats (RefCOCO refer/MDETR, Visual Genome, COCO) on hand-written fixtures,
and a round trip through the synthetic world (which is written in those formats)."""
import json
import os
import pickle

import numpy as np
import pytest

from pixelllm.data.coco import CocoInstances, decode_segmentation, load_coco_captions
from pixelllm.data.errors import DataFormatError, SkipCounter
from pixelllm.data.refcoco import RefCOCO, load_mdetr_refexp, load_refs, restricted_load
from pixelllm.data.visual_genome import load_densecap_splits, load_visual_genome, load_vg_coco_style

# ------------------------------------------------------------------------------------------ fixtures
IMAGES = [{"id": 11, "file_name": "COCO_train2014_000000000011.jpg", "height": 40, "width": 60},
          {"id": 12, "file_name": "COCO_train2014_000000000012.jpg", "height": 50, "width": 50}]
SQUARE = [[10.0, 10.0, 30.0, 10.0, 30.0, 20.0, 10.0, 20.0]]          # polygon of a 20×10 rectangle
ANNS = [{"id": 101, "image_id": 11, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 10.0], "area": 200.0,
         "iscrowd": 0, "segmentation": SQUARE},
        {"id": 102, "image_id": 12, "category_id": 2, "bbox": [0.0, 5.0, 5.0, 5.0], "area": 25.0,
         "iscrowd": 0, "segmentation": [[0.0, 5.0, 5.0, 5.0, 5.0, 10.0, 0.0, 10.0]]}]
CATS = [{"id": 1, "name": "circle"}, {"id": 2, "name": "star"}]
REFS = [
    {"ref_id": 1, "ann_id": 101, "image_id": 11, "split": "train", "category_id": 1, "sent_ids": [5, 6],
     "file_name": "COCO_train2014_000000000011_101.jpg",
     "sentences": [{"tokens": ["left", "circle"], "raw": "Left circle ", "sent": "left circle", "sent_id": 5},
                   {"tokens": ["the", "circle"], "raw": "The circle", "sent": "the circle", "sent_id": 6}]},
    {"ref_id": 2, "ann_id": 102, "image_id": 12, "split": "testB", "category_id": 2, "sent_ids": [7],
     "file_name": "COCO_train2014_000000000012_102.jpg",
     "sentences": [{"tokens": ["star"], "raw": "star", "sent": "star", "sent_id": 7}]},
]


def write_refer(root, refs=REFS, protocol=2):
    d = root / "refcoco"
    d.mkdir(parents=True, exist_ok=True)
    (d / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=protocol))
    (d / "instances.json").write_text(json.dumps({"images": IMAGES, "annotations": ANNS, "categories": CATS}))
    return root


# --------------------------------------------------------------------------------------------- refer
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_refcoco_joins_refs_with_instances(tmp_path, protocol):
    ref = RefCOCO(write_refer(tmp_path, protocol=protocol))
    assert len(ref) == 3 and ref.splits == ["testB", "train"]
    r = ref.records[0]
    assert r == {"ref_id": 1, "ann_id": 101, "image_id": 11, "file_name": "COCO_train2014_000000000011.jpg",
                 "width": 60, "height": 40, "expression": "left circle", "sent_id": 5,
                 "bbox": [10.0, 10.0, 20.0, 10.0], "segmentation": SQUARE, "category_id": 1, "split": "train"}
    assert [x["expression"] for x in ref.expressions("testB")] == ["star"]
    raw = RefCOCO(tmp_path, sentence_field="raw")
    assert raw.records[0]["expression"] == "Left circle"                      # stripped


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for payload in ([Evil()], {"a": Evil()}):
        for protocol in (0, 2, 4):
            p = tmp_path / "refs(unc).p"
            p.write_bytes(pickle.dumps(payload, protocol=protocol))
            with pytest.raises(DataFormatError, match=r"refusing to load global '(posix|os|nt)\.system'") as e:
                load_refs(p)
            assert str(p) in str(e.value)
            assert not marker.exists()
    # eval through builtins is refused too, as is any class instance
    p = tmp_path / "b.p"
    p.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DataFormatError, match="builtins.eval"):
        restricted_load(p)
    p.write_bytes(pickle.dumps([SkipCounter("x")]))
    with pytest.raises(DataFormatError, match="refusing to load global"):
        restricted_load(p)


def test_restricted_unpickler_reads_plain_containers(tmp_path):
    p = tmp_path / "ok.p"
    obj = [{"a": (1, 2.5, None, True), "b": ["x", "ü"], "c": 2**70}]
    for protocol in (0, 2, 4):
        p.write_bytes(pickle.dumps(obj, protocol=protocol))
        assert restricted_load(p) == obj
    # a Python 2 str (SHORT_BINSTRING) holding UTF-8 bytes, as in the original refer pickles
    p.write_bytes(b"\x80\x02]q\x00U\x05caf\xc3\xa9q\x01a.")
    assert restricted_load(p) == ["café"]


def test_mdetr_refexp_reader(tmp_path):
    data = {"images": [{"id": 0, "file_name": "COCO_train2014_000000000011.jpg", "height": 40, "width": 60,
                        "caption": "left circle ", "original_img_id": 11, "dataset_name": "refcoco"},
                       {"id": 1, "file_name": "COCO_train2014_000000000012.jpg", "height": 50, "width": 50,
                        "caption": "star", "original_img_id": 12, "dataset_name": "refcoco"}],
            "annotations": [{"id": 0, "image_id": 0, "bbox": [10, 10, 20, 10], "category_id": 1,
                             "segmentation": SQUARE, "area": 200, "iscrowd": 0},
                            {"id": 1, "image_id": 1, "bbox": [0, 5, 5, 5], "category_id": 2, "area": 25}]}
    p = tmp_path / "final_refcoco_testB.json"
    p.write_text(json.dumps(data))
    recs = load_mdetr_refexp(p)
    assert [r["expression"] for r in recs] == ["left circle", "star"]
    assert recs[0]["image_id"] == 11 and recs[0]["bbox"] == [10.0, 10.0, 20.0, 10.0] and recs[0]["split"] == "testB"
    assert recs[1]["segmentation"] is None


# ------------------------------------------------------------------------------------ visual genome
def write_vg(d):
    regions = [
        {"id": 1, "regions": [
            {"region_id": 1, "image_id": 1, "phrase": "a red circle ", "x": 5, "y": 6, "width": 10, "height": 8},
            {"region_id": 2, "image_id": 1, "phrase": "the sky", "x": -4, "y": 2, "width": 10, "height": 200},
            {"region_id": 3, "image_id": 1, "phrase": "nothing", "x": 3, "y": 3, "width": 0, "height": 5},
            {"region_id": 4, "image_id": 1, "phrase": "   ", "x": 3, "y": 3, "width": 4, "height": 5}]},
        {"id": 2, "regions": [
            {"region_id": 5, "image_id": 2, "phrase": "star", "x": 1.5, "y": 0, "width": 2, "height": 2}]},
    ]
    info = [{"image_id": 1, "width": 100, "height": 50, "coco_id": None, "flickr_id": 9,
             "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg"},
            {"image_id": 2, "width": 20, "height": 20, "coco_id": 3, "flickr_id": None,
             "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg"}]
    (d / "region_descriptions.json").write_text(json.dumps(regions))
    (d / "image_data.json").write_text(json.dumps(info))
    (d / "densecap_splits.json").write_text(json.dumps({"train": [1], "val": [], "test": [2]}))


def test_visual_genome_reader_strips_clips_and_counts(tmp_path):
    write_vg(tmp_path)
    skips = SkipCounter("vg")
    recs = load_visual_genome(tmp_path / "region_descriptions.json", tmp_path / "image_data.json",
                              tmp_path / "densecap_splits.json", skips=skips)
    assert [r["image_id"] for r in recs] == [1, 2]
    r = recs[0]
    assert (r["file_name"], r["width"], r["height"], r["split"]) == ("1.jpg", 100, 50, "train")
    assert r["regions"] == [{"region_id": 1, "phrase": "a red circle", "bbox": [5.0, 6.0, 10.0, 8.0]},
                            {"region_id": 2, "phrase": "the sky", "bbox": [0.0, 2.0, 6.0, 48.0]}]
    assert skips.counts == {"clipped: box partly outside the image": 1,
                            "skipped: box with width or height <= 0": 1, "skipped: empty phrase": 1}
    test = load_visual_genome(tmp_path / "region_descriptions.json", tmp_path / "image_data.json",
                              tmp_path / "densecap_splits.json", split="test")
    assert [r["image_id"] for r in test] == [2] and test[0]["regions"][0]["bbox"] == [1.5, 0.0, 2.0, 2.0]
    assert load_densecap_splits(tmp_path / "densecap_splits.json") == {1: "train", 2: "test"}


def test_visual_genome_coco_style_reader(tmp_path):
    data = {"images": [{"id": 1, "file_name": "1.jpg", "height": 50, "width": 100}],
            "annotations": [{"id": 7, "image_id": 1, "bbox": [-2, 3, 12, 4], "caption": "a cat "},
                            {"id": 8, "image_id": 1, "bbox": [1, 1, 5, -1], "caption": "dog"}]}
    p = tmp_path / "test.json"
    p.write_text(json.dumps(data))
    skips = SkipCounter("t")
    recs = load_vg_coco_style(p, split="test", skips=skips)
    assert recs == [{"image_id": 1, "file_name": "1.jpg", "width": 100, "height": 50, "split": "test",
                     "regions": [{"region_id": 7, "phrase": "a cat", "bbox": [0.0, 3.0, 10.0, 4.0]}]}]
    assert skips["skipped: box with width or height <= 0"] == 1


# --------------------------------------------------------------------------------------------- coco
def test_coco_captions_and_instances(tmp_path):
    caps = {"images": IMAGES, "annotations": [
        {"id": 1, "image_id": 11, "caption": "A circle. "}, {"id": 2, "image_id": 11, "caption": "a shape"},
        {"id": 3, "image_id": 12, "caption": " "}]}
    p = tmp_path / "captions_train.json"
    p.write_text(json.dumps(caps))
    skips = SkipCounter("c")
    recs = load_coco_captions(p, skips=skips)
    assert recs == [{"image_id": 11, "file_name": IMAGES[0]["file_name"], "width": 60, "height": 40,
                     "captions": ["A circle.", "a shape"]}]
    assert skips.counts == {"skipped: empty caption": 1, "skipped: image without captions": 1}
    inst = tmp_path / "instances.json"
    inst.write_text(json.dumps({"images": IMAGES, "annotations": ANNS, "categories": CATS}))
    ci = CocoInstances(inst)
    assert ci.image_ids() == [11, 12] and ci.objects(11)[0]["category"] == "circle"
    m = ci.mask(101)
    assert m.shape == (40, 60) and m.dtype == np.uint8
    np.testing.assert_array_equal(m, decode_segmentation(SQUARE, 40, 60))


def test_decode_segmentation_formats_agree():
    from pycocotools import mask as mask_utils

    m = np.zeros((12, 9), np.uint8)
    m[2:7, 3:8] = 1                                                            # 5×5 square
    compressed = mask_utils.encode(np.asfortranarray(m))
    as_str = {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}
    # uncompressed RLE: column-major run lengths, starting with zeros
    flat = m.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n); cur, n = v, 1
    runs.append(n)
    for seg in (compressed, as_str, {"size": [12, 9], "counts": runs}):
        np.testing.assert_array_equal(decode_segmentation(seg, 12, 9), m)
    poly = decode_segmentation([[3, 2, 8, 2, 8, 7, 3, 7]], 12, 9)
    assert poly.sum() == 25 and poly[2:7, 3:8].all()                           # pixel-centre rasterisation
    with pytest.raises(DataFormatError, match="segmentation.: expected polygons or an RLE object, got int"):
        decode_segmentation(42, 12, 9)


# ---------------------------------------------------------------------------------- synthetic world
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pixelllm.data.synthetic import generate

    out = tmp_path_factory.mktemp("world")
    stats = generate(out, n_scenes=12, image_size=128, seed=0, workers=1, progress=False)
    return out, stats


def test_synthetic_world_round_trip(world):
    from pixelllm.data.localized_narratives import iter_localized_narratives, load_localized_narratives

    root, stats = world
    scenes = {s["image_id"]: s for s in json.loads((root / "scenes.json").read_text())["images"]}
    # LN: every record parses; the no-trace oddities are exactly the skipped records
    n_ln, n_kept = 0, 0
    for sp in ("train", "val", "test"):
        p = root / "localized_narratives" / f"synthetic_{sp}_localized_narratives.jsonl"
        n_ln += len(list(iter_localized_narratives(p)))
        n_kept += len(load_localized_narratives(p, skips=SkipCounter("x")))
    ln = stats["localized_narratives"]
    assert n_ln == ln["records"] == 12
    assert n_ln - n_kept == ln["oddities"]["no_trace"]
    # captions
    caps = [r for sp in ("train", "val", "test") for r in load_coco_captions(root / "captions" / f"captions_{sp}.json")]
    assert len(caps) == 12 and all(len(r["captions"]) == 5 for r in caps)
    # refer: every expression's box is its object's box in scenes.json
    ref = RefCOCO(root)
    assert len(ref) == stats["files"]["refcoco/refs(unc).p"]["sentences"]
    for r in ref.records:
        obj = next(o for o in scenes[r["image_id"]]["objects"] if o["id"] == r["ann_id"])
        np.testing.assert_allclose(r["bbox"], obj["bbox"])
        assert r["file_name"] == scenes[r["image_id"]]["file_name"]
    # VG: all regions read (trailing spaces stripped, negative boxes clipped, none lost)
    skips = SkipCounter("vg")
    vg = load_visual_genome(root / "vg" / "region_descriptions.json", root / "vg" / "image_data.json",
                            root / "vg" / "densecap_splits.json", skips=skips)
    n_regions = sum(len(r["regions"]) for r in vg)
    assert n_regions == stats["vg"]["regions"]
    assert skips["clipped: box partly outside the image"] == stats["vg"]["oddities"]["negative_xy"]
    assert all(g["phrase"] == g["phrase"].strip() and g["bbox"][0] >= 0 and g["bbox"][1] >= 0
               for r in vg for g in r["regions"])
    assert all(r["file_name"] == scenes[r["image_id"]]["file_name"] for r in vg)
    # COCO instances: decoded masks have the annotated area
    ci = CocoInstances(root / "coco" / "instances_train.json")
    for iid in ci.image_ids()[:3]:
        for o in ci.objects(iid):
            assert ci.mask(o["id"]).sum() == o["area"]
