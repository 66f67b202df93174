"""Pointing: the per-utterance pointing sidecar beside each LN file (generator, reader, replay for an
existing world) and the ``pointing_accuracy`` metrics, teacher-forced and on generated captions."""
from __future__ import annotations

import hashlib
import json
import math
import shutil

import numpy as np

import pytest

from pixelllm.data import synthetic as S
from pixelllm.data import vocab as V
from pixelllm.data.errors import DataFormatError
from pixelllm.data.localized_narratives import load_localized_narratives, utterance_traces
from pixelllm.data.pointing import (dump_pointing, load_object_boxes, load_pointing, pointing_path,
                                    pointing_record)
from pixelllm.eval.trace import (centre_points, colour_shape_phrases, generated_pointing_hits, mean_point,
                                 identified_tokens, pointing_accuracy, points_in_boxes, random_object_points,
                                 words_of_tokens)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SPLITS = ("train", "val", "test")


def _ln(root, split):
    return root / "localized_narratives" / f"synthetic_{split}_localized_narratives.jsonl"


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    S.generate(out, n_scenes=30, seed=5, split_fractions=(0.5, 0.2, 0.3), workers=1, progress=False)
    return out


# ------------------------------------------------------------------------------------------- metric
def test_pointing_accuracy_hand_made():
    boxes = np.array([[0.0, 0.0, 0.5, 0.5]] * 4 + [[0.5, 0.5, 1.0, 1.0]])
    pred = np.array([[0.1, 0.1, 0.3, 0.3],      # centre (0.2, 0.2): inside → hit
                     [0.4, 0.4, 0.8, 0.8],      # centre (0.6, 0.6): outside although a corner is inside
                     [0.0, 0.0, 1.0, 1.0],      # centre (0.5, 0.5): on the edge → hit
                     [0.9, 0.9, 0.9, 0.9],      # not on an object: not counted
                     [0.6, 0.7, 0.8, 0.9]])     # centre (0.7, 0.8): hit
    on = np.array([True, True, True, False, True])
    assert pointing_accuracy(pred, boxes, on) == 0.75
    # one point per token (the second corners): (0.3, 0.3) in, (0.8, 0.8) out, (1, 1) out, (0.8, 0.9) in
    assert pointing_accuracy(pred[:, 2:], boxes, on) == 0.5
    np.testing.assert_allclose(mean_point(pred[:2]), [[0.2, 0.2], [0.6, 0.6]])
    assert np.isnan(pointing_accuracy(pred, boxes, np.zeros(5, bool)))
    # image centre: (0.5, 0.5) lies on an edge of both boxes; just off it, in neither
    assert pointing_accuracy(centre_points((5,)), boxes, on) == 1.0
    assert pointing_accuracy(centre_points((2,)) + 0.01, boxes[:2], [True, True]) == 0.0
    with pytest.raises(ValueError, match="on_object"):
        pointing_accuracy(pred, boxes, on[:3])
    assert points_in_boxes([[0.5, 0.5], [0.51, 0.2]], [[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]).tolist() == [True, False]


def test_random_object_baseline():
    one = np.array([[0.2, 0.2, 0.4, 0.6]])
    np.testing.assert_allclose(random_object_points([one, one], rng=3), [[0.3, 0.4], [0.3, 0.4]])
    two = np.array([[0.0, 0.0, 0.2, 0.2], [0.8, 0.8, 1.0, 1.0]])
    pts = random_object_points([two] * 4000, rng=7)
    assert set(map(tuple, np.round(pts, 6))) == {(0.1, 0.1), (0.9, 0.9)}
    np.testing.assert_array_equal(pts, random_object_points([two] * 4000, rng=7))     # seeded
    acc = pointing_accuracy(pts, np.repeat(two[:1], 4000, 0), np.ones(4000, bool))
    assert abs(acc - 0.5) < 0.03                                                      # 1 of 2 objects
    with pytest.raises(ValueError, match="token 1 has no object"):
        random_object_points([one, np.zeros((0, 4))])


def test_phrases_of_generated_tokens_and_their_hits():
    tokens = ["▁in", "▁this", "▁image", "▁a", "▁big", "▁red", "▁cir", "cle", ",", "▁two", "▁blue", "▁star", "s",
              "▁and", "▁a", "▁green", "▁.", "▁square", "."]
    assert words_of_tokens(tokens)[5:9] == [("red", [5]), ("circle", [6, 7]), ("", [8]), ("two", [9])]
    shapes = {"circle": "circle", "star": "star", "stars": "star", "square": "square"}
    phrases = colour_shape_phrases(tokens, ["red", "blue", "green"], shapes)
    # "green . square" is not a phrase: the colour must directly precede the shape
    assert phrases == [{"colour": "red", "shape": "circle", "tokens": [6, 7]},
                       {"colour": "blue", "shape": "star", "tokens": [11, 12]}]
    pts = np.full((len(tokens), 4), 0.9)
    pts[6], pts[7] = [0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.4, 0.4]        # noun point: mean(0.1, 0.3) = 0.2
    pts[11], pts[12] = [0.6, 0.1, 0.6, 0.1], [0.6, 0.1, 0.6, 0.1]
    objects = [("red", "circle", (0.15, 0.15, 0.25, 0.25)),            # contains (0.2, 0.2)
               ("blue", "star", (0.0, 0.0, 0.3, 0.3)),                 # wrong place
               ("red", "star", (0.5, 0.0, 0.7, 0.2))]                  # right place, wrong colour
    assert generated_pointing_hits(phrases, pts, objects).tolist() == [True, False]
    # colour only: the "blue star" point lies in no blue object; a blue circle there would count
    assert generated_pointing_hits(phrases, pts, objects, match="colour").tolist() == [True, False]
    with_circle = objects + [("blue", "circle", (0.55, 0.05, 0.65, 0.15))]
    assert generated_pointing_hits(phrases, pts, with_circle, match="colour").tolist() == [True, True]
    assert generated_pointing_hits(phrases, pts, with_circle).tolist() == [True, False]
    with pytest.raises(ValueError, match="match"):
        generated_pointing_hits(phrases, pts, objects, match="shape")
    objects.append(("blue", "star", (0.55, 0.05, 0.65, 0.15)))        # a second blue star, there
    assert generated_pointing_hits(phrases, pts, objects).tolist() == [True, True]
    assert generated_pointing_hits(phrases, pts, []).tolist() == [False, False]


# ------------------------------------------------------------------------------------------ sidecar
def test_sidecar_round_trip_and_errors(tmp_path):
    recs = [pointing_record("7", 3, [None, 71, 71, "background", None]), pointing_record(8, None, [])]
    assert recs[0] == {"image_id": "7", "annotator_id": 3, "pointing": [None, 71, 71, None, None]}
    p = tmp_path / "x_localized_narratives.pointing.jsonl"
    assert pointing_path(tmp_path / "x_localized_narratives.jsonl") == p
    p.write_bytes(dump_pointing(recs))
    assert load_pointing(p) == {("7", 3): [None, 71, 71, None, None], ("8", None): []}
    bad = [('{"image_id": "7", "annotator_id": 3, "pointing": [1, "a"]}', r"x.pointing.jsonl:2: field 'pointing\[1\]'"),
           ('{"image_id": "7", "annotator_id": 3.5, "pointing": []}', r":2: field 'annotator_id'"),
           ('{"image_id": "7", "annotator_id": 3}', r":2: field 'pointing': missing"),
           ('{"image_id": "7", "annotator_id": 3, "pointing": [true]}', r":2: field 'pointing\[0\]'"),
           ('{"image_id": "7", ', r":2: malformed JSON"),
           ('{"image_id": "7", "annotator_id": 3, "pointing": []}', r":2: field 'image_id': narrative .* twice")]
    for line, msg in bad:
        f = tmp_path / "x.pointing.jsonl"
        f.write_text('{"image_id": "7", "annotator_id": 3, "pointing": []}\n' + line + "\n")
        with pytest.raises(DataFormatError, match=msg):
            load_pointing(f)


def test_generator_writes_sidecars_that_match_the_narratives(world):
    objects = {}
    for sp in SPLITS:
        objects.update(load_object_boxes(world / "coco" / f"instances_{sp}.json", world / "scenes.json"))
    n_on = n_inside = n_named = n_same = 0
    for sp in SPLITS:
        ln = _ln(world, sp)
        table = load_pointing(pointing_path(ln), ln)                 # one entry per utterance, same order
        for n in load_localized_narratives(ln, require_trace=False):
            ids = table[(n.image_id, n.annotator_id)]
            objs = {o.ann_id: o for o in objects[n.image_id]}
            assert {a for a in ids if a is not None} == set(objs)    # every object is pointed at
            ut = utterance_traces(n)
            for k, a in enumerate(ids):
                if a is None:
                    continue
                n_on += 1
                if ut.valid[k]:
                    n_inside += bool(points_in_boxes(ut.centers[k], objs[a].box))
                shape = [w.strip(".,") for w in n.timed_caption[k].utterance.lower().split()
                         if w.strip(".,") in V.SHAPES]
                if shape:
                    n_named += 1
                    n_same += shape[0] == objs[a].shape
    assert n_on > 300
    assert n_same == n_named > 50                   # a shape word is spoken only while on that object
    assert n_inside / n_on > 0.85                   # the trace dwells on the object (misses: zero-length, no trace)


def test_existing_world_gets_its_sidecars_without_regenerating(world, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(world, copy, ignore=shutil.ignore_patterns("images"))
    before = {p.name: _sha(p) for p in (copy / "localized_narratives").iterdir()}
    for sp in SPLITS:
        pointing_path(_ln(copy, sp)).unlink()
    stats = _sha(copy / "stats.json")
    written = S.add_pointing_sidecars(copy)
    assert sorted(p.name for p in written) == sorted(pointing_path(_ln(copy, sp)).name for sp in SPLITS)
    assert {p.name: _sha(p) for p in (copy / "localized_narratives").iterdir()} == before   # identical bytes
    assert _sha(copy / "stats.json") == stats
    assert S.add_pointing_sidecars(copy) == []                                             # nothing missing
    # a narrative the recorded config does not reproduce: no sidecar can be derived, the line is named
    ln = _ln(copy, "val")
    lines = ln.read_text().splitlines()
    lines[1] = lines[1].replace('"annotator_id": ', '"annotator_id": 1')
    ln.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"synthetic_val_localized_narratives.jsonl:2: re-drawing"):
        S.add_pointing_sidecars(copy, overwrite=True)


def test_ensure_data_adds_missing_sidecars_to_a_reused_world(tmp_path):
    from pixelllm.configs import get_config
    from pixelllm.configs.base import apply_overrides
    from pixelllm.pretrain.prerequisites import ensure_data

    cfg = apply_overrides(get_config("data", smoke=True), {"run_dir": str(tmp_path), "n_scenes": 12})
    data = ensure_data(cfg, progress=False)
    side = pointing_path(_ln(data, "train"))
    want = side.read_bytes()
    side.unlink()
    stats = (data / "stats.json").stat().st_mtime_ns
    jpg = (data / "images" / f"{1:012d}.jpg").stat().st_mtime_ns
    assert ensure_data(cfg, progress=False) == data
    assert side.read_bytes() == want
    assert (data / "stats.json").stat().st_mtime_ns == stats                    # not regenerated
    assert (data / "images" / f"{1:012d}.jpg").stat().st_mtime_ns == jpg


# -------------------------------------------------------------------------------------- evaluation
def test_evaluate_pointing_end_to_end(world):
    import torch
    from torch.utils.data import Subset

    from conftest import make_test_model
    from pixelllm.data.datasets import LNTraceDataset
    from pixelllm.data.tokenizer import corpus_texts, train_tokenizer
    from pixelllm.engine.evaluate import evaluate_pointing

    torch.set_num_threads(1)
    tok = train_tokenizer(corpus_texts(world), world.parent / "tok", vocab_size=300)
    model = make_test_model(tokenizer=tok)
    ds = LNTraceDataset(_ln(world, "test"), world / "images", tok, image_size=128, return_trace_samples=True)
    sub = Subset(ds, range(4))
    res = evaluate_pointing(model, sub, tok, batch_size=4, caption_images=2, max_new_tokens=6, progress=False)
    # the same on-object tokens, counted independently from the sidecar: each word labelled by the utterance
    # it was spoken in (the caption is the utterances joined), and by the paper's relative-position rule
    from pixelllm.data.localized_narratives import utterance_char_spans

    ln = _ln(world, "test")
    table = load_pointing(pointing_path(ln))
    objects = load_object_boxes(world / "coco" / "instances_test.json", world / "scenes.json")
    counts = {"own": [0, 0], "rel": [0, 0]}
    for i in range(4):
        n = ds.narratives[i]
        boxes = {o.ann_id: o.box for o in objects[n.image_id]}
        rel = ds.token_utterances(i)[:-1]
        spans = utterance_char_spans(n.caption, [u.utterance for u in n.timed_caption])
        enc = tok(n.caption, return_offsets_mapping=True, add_special_tokens=False)
        # the utterance whose characters hold the token's middle, else the nearest one (every utterance
        # of the synthetic world is valid)
        own = [min(range(len(spans)), key=lambda k: max(spans[k][0] - (o[0] + o[1] - 1) / 2,
                                                         (o[0] + o[1] - 1) / 2 - spans[k][1] + 1, 0))
               for o in enc["offset_mapping"][:len(rel)]]
        for name, utt in (("own", own), ("rel", rel)):
            for u in utt:
                a = table[(n.image_id, n.annotator_id)][u] if u >= 0 else None
                if a is not None:
                    counts[name][0] += 1
                    counts[name][1] += bool(points_in_boxes([0.5, 0.5], boxes[a]))
    n_tok, n_centre = counts["own"]
    assert res["n_tokens"] == n_tok > 0 and res["n_narratives"] == 4
    assert res["n_tokens_relative_position"] == counts["rel"][0] > 0
    assert res["n_narratives_relative_position_labels"] == 0
    assert res["pointing_accuracy_centre"] == pytest.approx(n_centre / n_tok)
    assert res["pointing_accuracy_target"] > 0.6                  # the training targets mostly point right
    for k in ("pointing_accuracy", "pointing_accuracy_random_object", "pointing_accuracy_relative_position",
              "pointing_accuracy_target_relative_position"):
        assert 0.0 <= res[k] <= 1.0
    # the identified / unidentified split partitions the same tokens
    f = res["identified_fraction"]
    assert 0.2 < f < 1.0
    assert res["pointing_accuracy"] == pytest.approx(
        f * res["pointing_accuracy_identified"] + (1 - f) * res["pointing_accuracy_unidentified"])

    assert res["n_images_generated"] == 2 and len(res["generated"]) == 2
    assert res["n_phrases"] == sum(len(g["phrases"]) for g in res["generated"])
    assert res["n_phrases_existing"] == sum(p["exists"] for g in res["generated"] for p in g["phrases"])
    # a colour + shape hit is also a colour hit
    if res["n_phrases"]:
        assert res["pointing_accuracy_generated_colour"] >= res["pointing_accuracy_generated"]
    else:
        assert math.isnan(res["pointing_accuracy_generated_colour"])
    assert not any(p["hit"] and not p["exists"] for g in res["generated"] for p in g["phrases"])
    with pytest.raises(ValueError, match="return_trace_samples"):
        evaluate_pointing(model, LNTraceDataset(_ln(world, "test"), world / "images", tok, image_size=128), tok)


def test_identified_tokens_hand_made():
    # "we see a big red star in the top , a small gre|en circle ." ; object 7 then object 9
    toks = ["\u2581we", "\u2581see", "\u2581a", "\u2581big", "\u2581red", "\u2581star", "\u2581in", "\u2581the",
            "\u2581top", ",", "\u2581a", "\u2581small", "\u2581gre", "en", "\u2581circle", "."]
    objs = [None, None, 7, 7, 7, 7, 7, 7, 7, None, 9, 9, 9, 9, 9, 9]
    ids = {"red", "green", "star", "circle", "top"}
    got = identified_tokens(toks, objs, ids)
    # object 7: "red" ends at 4 → tokens 5.. known; object 9: "green" ends at 13 (two pieces) → 14.. known
    want = [False] * 5 + [True] * 4 + [False] * 5 + [True, True]
    assert got.tolist() == want
    # a new run of the same object after a connective starts unidentified again
    got2 = identified_tokens(["\u2581red", "\u2581star", "\u2581and", "\u2581it"], [7, 7, None, 7], ids)
    assert got2.tolist() == [False, True, False, False]
    # a word split across two runs does not identify either
    assert not identified_tokens(["\u2581gre", "en", "\u2581x"], [1, 2, 2], ids).any()
    with pytest.raises(ValueError, match="3 tokens but 2 objects"):
        identified_tokens(toks[:3], objs[:2], ids)
