"""Multi-target (MUSE-like) questions: the generator on a small world, the reader's bad-input rules, the
Dataset / collate, and the multi-target mask evaluator on hand-made cases."""
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from pixelllm.data import vocab as V
from pixelllm.data.errors import DataFormatError
from pixelllm.data.muse import (MuseDataset, load_muse, muse_collate, muse_path, rle_string_counts,
                                text_answer_of)
from pixelllm.data.synthetic import generate, relation_holds
from pixelllm.data.synthetic.muse import (MAX_TARGETS, QUESTIONS_PER_IMAGE, candidate_questions,
                                          muse_statistics, relation_margin, write_muse)
from pixelllm.eval.multi_mask import evaluate_multi_target, match_masks, score_question

SPLITS = ("train", "val", "test")
N = 48


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("muse_world")
    generate(out, n_scenes=N, image_size=128, seed=0, split_fractions=(0.5, 0.25, 0.25), workers=1, progress=False)
    return out


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _scenes(root):
    return {s["image_id"]: s for s in json.loads((root / "scenes.json").read_text())["images"]}


# ------------------------------------------------------------------------------------------ generator
def test_generate_writes_muse_and_an_old_world_gets_the_same_files_untouched(world, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(world, copy, ignore=shutil.ignore_patterns("images"))
    want = {sp: _sha(muse_path(world, sp)) for sp in SPLITS}
    shutil.rmtree(copy / "muse")                                          # a world made before muse/ existed
    others = {p: _sha(p) for p in copy.rglob("*") if p.is_file()}
    written = write_muse(copy, seed=0)
    assert sorted(p.name for p in written) == sorted(f"synthetic_{sp}_muse.json" for sp in SPLITS)
    assert {sp: _sha(muse_path(copy, sp)) for sp in SPLITS} == want       # byte-identical to generate()'s
    assert {p: _sha(p) for p in others} == others                         # nothing else touched
    assert write_muse(copy, seed=0) == []                                 # all present: nothing written
    write_muse(copy, seed=1, overwrite=True)
    assert _sha(muse_path(copy, "train")) != want["train"]                # another seed, other questions


def test_ensure_data_adds_muse_to_a_reused_world(tmp_path):
    from pixelllm.configs import get_config
    from pixelllm.configs.base import apply_overrides
    from pixelllm.pretrain.prerequisites import ensure_data

    cfg = apply_overrides(get_config("data", smoke=True), {"run_dir": str(tmp_path), "n_scenes": 12})
    data = ensure_data(cfg, progress=False)
    want = muse_path(data, "train").read_bytes()
    shutil.rmtree(data / "muse")
    stats = (data / "stats.json").stat().st_mtime_ns
    assert ensure_data(cfg, progress=False) == data
    assert muse_path(data, "train").read_bytes() == want
    assert (data / "stats.json").stat().st_mtime_ns == stats              # not regenerated


def test_counts_balanced_and_questions_per_image(world):
    stats = muse_statistics(world)
    train = stats["train"]
    assert train["questions"] == QUESTIONS_PER_IMAGE * train["images"] == QUESTIONS_PER_IMAGE * N // 2
    k = [train["by_targets"][str(i)] for i in range(1, MAX_TARGETS + 1)]
    assert min(k) >= 0.8 * max(k) and min(k) > 0, k                       # 1, 2, 3, 4 targets ~balanced
    recs = load_muse(muse_path(world, "train"))
    assert all(1 <= len(r["answers"]) <= MAX_TARGETS for r in recs)
    per_image = {}
    for r in recs:
        per_image.setdefault(r["image_id"], []).append(r["question"])
    assert all(len(set(q)) == len(q) for q in per_image.values())        # no question asked twice of an image


def test_masks_are_the_worlds_instance_masks_and_answers_name_each_target(world):
    scenes = _scenes(world)
    for sp in SPLITS:
        anns = {a["id"]: a for a in json.loads((world / f"coco/instances_{sp}.json").read_text())["annotations"]}
        for r in load_muse(muse_path(world, sp)):
            objs = {o["id"]: o for o in scenes[r["image_id"]]["objects"]}
            assert scenes[r["image_id"]]["split"] == sp
            centres = []
            for t in r["answers"]:
                a, o = anns[t["id"]], objs[t["id"]]
                assert a["image_id"] == r["image_id"]
                got = mask_utils.decode({"size": t["segmentation"]["size"], "counts": t["segmentation"]["counts"].encode()})
                ref = mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
                assert got.shape == (r["height"], r["width"]) and (got == ref).all() and got.sum() == o["area"]
                assert t["bbox"] == o["bbox"] and t["category_name"] == o["shape"]
                phrase = r["answer"][t["phrase_span"][0]:t["phrase_span"][1]]
                assert phrase == t["rephrased_name"] and f"{o['color']} {o['shape']}" in phrase
                centres.append(o["bbox"][0] + o["bbox"][2] / 2)
            assert centres == sorted(centres)                             # named left to right
            assert r["text_answer"].replace(" {seg}", "") == r["answer"]


def test_target_sets_follow_the_question(world):
    """Re-derive the targets of the attribute templates from scenes.json."""
    scenes = _scenes(world)
    checked = 0
    for sp in SPLITS:
        for r in load_muse(muse_path(world, sp)):
            objs = scenes[r["image_id"]]["objects"]
            words = r["question"].split()[1:]
            ids = sorted(t["id"] for t in r["answers"])
            if r["template"] == "colour":
                want = [o["id"] for o in objs if o["color"] == words[1]]
            elif r["template"] == "shape":
                want = [o["id"] for o in objs if o["shape"] == words[1]]
            elif r["template"] == "size":
                want = [o["id"] for o in objs if o["size"] == words[1]]
            elif r["template"] == "all":
                want = [o["id"] for o in objs]
            elif r["template"] == "exclusion" and words[-2] == "not":
                want = [o["id"] for o in objs if o["color"] != words[-1]]
            else:
                continue
            assert ids == sorted(want), r["question"]
            checked += 1
    assert checked > 30


def test_candidates_of_a_hand_made_scene():
    def obj(i, shape, color, size, x, y, w=10, area=None):
        return {"id": i, "shape": shape, "color": color, "size": size, "bbox": [x, y, w, w],
                "area": area or {"small": 60, "medium": 120, "big": 250}[size]}

    scene = {"image_id": 1, "file_name": "x.jpg", "width": 128, "height": 128, "split": "test", "objects": [
        obj(10, "circle", "red", "small", 5, 60), obj(11, "circle", "red", "big", 40, 60),
        obj(12, "star", "blue", "medium", 80, 60), obj(13, "square", "red", "medium", 110, 60)]}
    c = {np_: (t, ids) for t, np_, ids in candidate_questions(scene)}
    assert c["every red shape"] == ("colour", (10, 11, 13))
    assert c["the red circles"] == ("colour_shape", (10, 11))
    assert c["every circle left of the star"] == ("relation", (10, 11))
    assert c["every shape right of the star"] == ("relation", (13,))
    assert "the two largest shapes" not in c                # 2nd place: a medium star and a medium square tie
    assert c["the largest shape"] == ("superlative", (11,))
    assert c["every shape"] == ("all", (10, 11, 12, 13))
    assert c["every shape except the star"] == ("exclusion", (10, 11, 13))
    assert "the largest circle" in c and c["the largest circle"][1] == (11,)
    assert all(1 <= len(ids) <= MAX_TARGETS for _, ids in c.values())


def test_relation_margin_agrees_with_relation_holds():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a = [*rng.uniform(0, 100, 2), *rng.uniform(2, 28, 2)]
        b = [*rng.uniform(0, 100, 2), *rng.uniform(2, 28, 2)]
        for rel in V.RELATIONS:
            m = relation_margin(rel, a, b, 128, 128)
            if abs(m) > 1e-9:
                assert (m > 0) == relation_holds(rel, a, b, 128, 128), (rel, a, b, m)


# ------------------------------------------------------------------------------------ reader + dataset
def test_dataset_items_and_collate(world):
    from pixelllm.data.coco import decode_segmentation
    from pixelllm.data.datasets import ResizePad

    ds = MuseDataset(world, "train", None, image_size=96)
    recs = load_muse(muse_path(world, "train"))
    assert len(ds) == len(recs)
    i = next(k for k, r in enumerate(recs) if len(r["answers"]) == 3)
    s, r = ds[i], recs[i]
    assert s["image"].shape == (3, 96, 96) and s["image"].dtype == torch.float32
    assert s["masks"].shape == (3, 96, 96) and s["masks"].dtype == torch.bool and s["num_targets"] == 3
    tf = ResizePad(96)
    for k, t in enumerate(r["answers"]):
        assert torch.equal(s["masks"][k], tf.mask(decode_segmentation(t["segmentation"], 128, 128)))
        x, y, w, h = t["bbox"]
        assert torch.allclose(s["boxes"][k], torch.tensor([x, y, x + w, y + h]) * 0.75 / 96)
    assert (s["boxes"] >= 0).all() and (s["boxes"] <= 1).all()
    assert s["question"] == r["question"] and s["answer"] == r["answer"] and s["image_id"] == r["image_id"]
    j = next(k for k, r in enumerate(recs) if len(r["answers"]) == 1)
    b = muse_collate([ds[j], ds[i]])
    assert b["masks"].shape == (2, 3, 96, 96) and b["boxes"].shape == (2, 3, 4)
    assert b["target_mask"].tolist() == [[True, False, False], [True, True, True]]
    assert b["num_targets"].tolist() == [1, 3] and not b["masks"][0, 1:].any() and (b["boxes"][0, 1:] == 0).all()
    assert torch.equal(b["masks"][1], s["masks"]) and b["questions"][1] == r["question"]
    with pytest.raises(ValueError, match="empty"):
        muse_collate([])
    from pixelllm.data.datasets import enable_image_cache

    store = enable_image_cache(torch.utils.data.Subset(ds, [i, j, i]))
    assert ds.decoded is store
    cached = [ds[i], ds[j], ds[i]]
    assert torch.equal(cached[0]["image"], s["image"]) and torch.equal(cached[2]["image"], s["image"])
    other = int(recs[i]["image_id"] != recs[j]["image_id"])
    assert (store.misses, store.hits) == (1 + other, 2 - other)           # each image decoded once


def test_rle_string_counts_matches_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = (rng.random((23, 17)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(m))
        want, value, n = [], 0, 0                                 # runs of 0s and 1s, column-major, from 0s
        for v in m.flatten(order="F"):
            if v != value:
                want.append(n)
                value, n = v, 0
            n += 1
        assert rle_string_counts(rle["counts"].decode()) == want + [n]


def _one_record(**over):
    seg = mask_utils.encode(np.asfortranarray(np.pad(np.ones((2, 2), np.uint8), ((1, 5), (1, 5)))))
    rec = {"id": 1, "image_id": 1, "file_name": "000000000001.jpg", "height": 8, "width": 8,
           "question": "segment every red shape", "answer": "the red circle", "template": "colour",
           "answers": [{"id": 10, "category_id": 1, "category_name": "circle", "rephrased_name": "the red circle",
                        "phrase_span": [0, 14], "bbox": [1.0, 1.0, 2.0, 2.0], "area": 4,
                        "segmentation": {"size": [8, 8], "counts": seg["counts"].decode()}}]}
    rec.update(over)
    return rec


def _write(tmp_path, recs, name="synthetic_val_muse.json"):
    p = tmp_path / "muse" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"info": {}, "questions": recs}))
    return p


def _target(**over):
    t = dict(_one_record()["answers"][0])
    t.update(over)
    return t


@pytest.mark.parametrize("recs, field", [
    ([_one_record(), _one_record()], r"questions\[1\]\.id': duplicate question id 1 \(also questions\[0\]\)"),
    ([_one_record(image_id="1")], r"questions\[0\] \(id 1\)\.image_id': expected an integer"),
    ([_one_record(answers=[])], r"questions\[0\] \(id 1\)\.answers': a question needs at least one target"),
    ([_one_record(answers=[_target(phrase_span=[0, 9])])], r"answers\[0\]\.phrase_span'"),
    ([_one_record(answers=[_target(segmentation={"size": [8, 8], "counts": [10, 4, 40]})])],
     r"answers\[0\]\.segmentation\.counts': run lengths must be >= 0 and add up to 8×8 = 64, got sum 54"),
    ([_one_record(answers=[_target(segmentation={"size": [8, 8], "counts": "0~~~"})])],
     r"segmentation\.counts': not a compressed RLE: character '~'"),
    ([_one_record(answers=[_target(segmentation={"size": [8, 9], "counts": [72]})])],
     r"segmentation\.size': expected \[height, width\] = \[8, 8\]"),
    ([_one_record(answers=[_target(bbox=[1, 2, 3])])], r"answers\[0\]\.bbox': expected 4 numbers"),
    ([_one_record(answers=[_target(), _target()])], r"answers': a target is listed twice"),
    ([_one_record(text_answer="the red circle")], r"text_answer': 0 \{seg\} placeholders for 1 targets"),
])
def test_bad_records_name_file_record_and_field(tmp_path, recs, field):
    p = _write(tmp_path, recs)
    with pytest.raises(DataFormatError, match=r"synthetic_val_muse\.json: field '[^']*" + field) as e:
        load_muse(p)
    assert e.value.path == str(p)


def test_a_good_record_loads_and_bad_files_fail(tmp_path):
    r = load_muse(_write(tmp_path, [_one_record()]))[0]
    assert r["text_answer"] == "the red circle {seg}" and r["answers"][0]["phrase_span"] == [0, 14]
    p = tmp_path / "bad.json"
    p.write_text('{"questions": [')
    with pytest.raises(DataFormatError, match=r"bad\.json:1: malformed JSON"):
        load_muse(p)
    p.write_text('[]')
    with pytest.raises(DataFormatError, match=r"bad\.json: field 'questions'"):
        load_muse(p)


def test_dataset_missing_image_and_too_many_targets(tmp_path, caplog):
    from PIL import Image

    two = _one_record(id=2, answer="the red circle and the red circle",
                      answers=[_target(), _target(id=11, phrase_span=[19, 33])])
    _write(tmp_path, [_one_record(), two])
    with pytest.raises(FileNotFoundError, match=r"question id 1 \(image_id 1\): field 'file_name': image .*000000000001\.jpg not found"):
        MuseDataset(tmp_path, "val", None, image_size=8)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "000000000001.jpg")
    ds = MuseDataset(tmp_path, "val", None, image_size=8, max_targets=1)
    assert len(ds) == 1 and ds.skips["skipped: more than 1 targets"] == 1
    assert "skipped: more than 1 targets: 1" in caplog.text
    assert ds[0]["masks"][0].sum() == 4 and ds[0]["masks"][0, 1:3, 1:3].all()


def test_text_answer_of():
    assert text_answer_of("the a, the b and the c", [[0, 5], [7, 12], [17, 22]]) == \
        "the a {seg}, the b {seg} and the c {seg}"


# ------------------------------------------------------------------------------------------ evaluator
def _m(*cells, size=4):
    """A size×size bool mask with the given (row, col) cells set."""
    m = np.zeros((size, size), bool)
    for r, c in cells:
        m[r, c] = True
    return m


A = _m((0, 0), (0, 1), (1, 0), (1, 1))                  # top-left 2×2
B = _m((2, 2), (2, 3), (3, 2), (3, 3))                  # bottom-right 2×2
C = _m((0, 2), (0, 3), (1, 2), (1, 3))                  # top-right 2×2
A6 = A | _m((0, 2), (1, 2))                              # A plus a column: IoU(A6, A) = 4/6
E = np.zeros((0, 4, 4), bool)


def test_match_masks_hand_made():
    assert match_masks(np.stack([A, B]), np.stack([A, B])) == [(0, 0), (1, 1)]
    assert match_masks(np.stack([B, A]), np.stack([A, B])) == [(0, 1), (1, 0)]         # swapped order
    assert match_masks(np.stack([C, B, A]), np.stack([A, B])) == [(1, 1), (2, 0)]      # extra C left out
    assert match_masks(np.stack([A]), np.stack([B, A6])) == [(0, 1)]
    assert match_masks(E, np.stack([A])) == []
    probs = np.stack([A * 0.9 + 0.2 * ~A, B * 0.6]).astype(np.float32)                 # probabilities
    assert match_masks(probs, np.stack([B, A])) == [(0, 1), (1, 0)]
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        match_masks(np.stack([A * 3.0]), np.stack([A]))
    with pytest.raises(ValueError, match="pred masks are \\(4, 4\\) but gt masks \\(5, 5\\)"):
        match_masks(np.stack([A]), np.zeros((1, 5, 5), bool))


def test_score_question_hand_made():
    s = score_question(np.stack([A]), np.stack([A, B]))                 # one missing
    assert s["ious"] == [1.0, 0.0] and s["iou"] == 0.5 and s["intersections"] == [4, 0] and s["unions"] == [4, 4]
    s = score_question(np.stack([A, B, C]), np.stack([A, B]))           # one extra
    assert s["ious"] == [1.0, 1.0, 0.0] and s["iou"] == pytest.approx(2 / 3) and sum(s["unions"]) == 12
    s = score_question(np.stack([A]), E)                                 # empty ground truth, one prediction
    assert s["ious"] == [0.0] and s["unions"] == [4] and s["iou"] == 0.0
    s = score_question(E, E)                                             # nothing to find, nothing found
    assert s["ious"] == [] and s["iou"] == 1.0


def test_evaluate_multi_target_hand_made():
    results = [
        {"pred_masks": np.stack([A, B]), "gt_masks": np.stack([A, B])},             # perfect        1, 1
        {"pred_masks": np.stack([B, A]), "gt_masks": np.stack([A, B])},             # swapped        1, 1
        {"pred_masks": np.stack([A]), "gt_masks": np.stack([A, B])},                # one missing    1, 0
        {"pred_masks": torch.from_numpy(np.stack([A6, B, C])), "gt_masks": torch.from_numpy(np.stack([A, B, C]))},
        {"pred_masks": np.stack([A, B, C]), "gt_masks": np.stack([A, B])},          # one extra      1, 1, 0
        {"pred_masks": np.stack([A6]), "gt_masks": np.stack([A])},                  # partial        4/6
    ]
    out = evaluate_multi_target(results)
    q = [1.0, 1.0, 0.5, (4 / 6 + 2) / 3, 2 / 3, 4 / 6]
    assert out["giou"] == pytest.approx(np.mean(q))
    pairs = [1, 1, 1, 1, 1, 0, 4 / 6, 1, 1, 1, 1, 0, 4 / 6]
    assert out["giou_pairs"] == pytest.approx(np.mean(pairs)) and out["n_pairs"] == 13 and out["n"] == 6
    inter = 8 + 8 + 4 + 12 + 8 + 4
    union = 8 + 8 + 8 + 14 + 12 + 6
    assert out["ciou"] == pytest.approx(inter / union)
    assert out["count_accuracy"] == pytest.approx(4 / 6)
    bt = out["by_targets"]
    assert set(bt) == {"1", "2", "3+"}
    assert bt["1"]["n"] == 1 and bt["1"]["giou"] == pytest.approx(4 / 6) and bt["1"]["ciou"] == pytest.approx(4 / 6)
    assert bt["2"]["n"] == 4 and bt["2"]["giou"] == pytest.approx(np.mean([1, 1, 0.5, 2 / 3]))
    assert bt["2"]["ciou"] == pytest.approx((8 + 8 + 4 + 8) / (8 + 8 + 8 + 12))
    assert bt["3+"]["n"] == 1 and bt["3+"]["ciou"] == pytest.approx(12 / 14)
    empty = evaluate_multi_target([{"pred_masks": np.stack([A]), "gt_masks": E}])
    assert empty["by_targets"]["0"]["n"] == 1 and empty["giou"] == 0.0 and empty["ciou"] == 0.0
    assert empty["by_targets"]["1"]["n"] == 0 and np.isnan(empty["by_targets"]["1"]["giou"])
    with pytest.raises(ValueError, match="no results"):
        evaluate_multi_target([])
    with pytest.raises(ValueError, match=r"results\[0\] needs 'pred_masks' and 'gt_masks'"):
        evaluate_multi_target([{"pred": A}])


def test_perfect_predictions_on_the_world_score_one(world):
    recs = load_muse(muse_path(world, "test"))
    from pixelllm.data.muse import target_masks_np

    res = [{"pred_masks": target_masks_np(r)[::-1].copy(), "gt_masks": target_masks_np(r)} for r in recs]
    out = evaluate_multi_target(res)
    assert out["giou"] == out["ciou"] == 1.0 and out["count_accuracy"] == 1.0
    res = [{"pred_masks": m["gt_masks"][:1], "gt_masks": m["gt_masks"]} for m in res]       # only the first target
    out = evaluate_multi_target(res)
    assert out["by_targets"]["1"]["giou"] == 1.0
    assert out["by_targets"]["2"]["giou"] == pytest.approx(0.5)
