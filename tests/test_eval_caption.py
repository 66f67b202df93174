"""Caption metrics through pycocoevalcap's scorers (Java: PTB tokenizer + METEOR 1.5).

One METEOR process for the whole module (it loads its paraphrase table in several seconds); it is
also used for the real-METEOR DenseCap check.
"""
import shutil

import pytest

from pixelllm.eval.caption import Meteor, caption_metrics, meteor_scores, ptb_tokenize
from pixelllm.eval.densecap import densecap_map

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's METEOR / PTB need Java")

# disjoint vocabularies across items, ≥ 4 words each (so every n-gram order of CIDEr-D is present)
REFS = {1: ["A red circle sits on the left."], 2: ["two blue squares near top"], 3: ["one small green triangle below"]}


@pytest.fixture(scope="module")
def meteor():
    m = Meteor()
    yield m
    m.close()
    assert m._m.meteor_p.returncode is not None  # the Java process is gone


def test_identical_captions(meteor):
    preds = {k: v[0] for k, v in REFS.items()}
    out = caption_metrics(preds, REFS, metrics=("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"), meteor=meteor)
    assert out["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert out["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert out["METEOR"] > 0.9
    assert out["ROUGE-L"] == pytest.approx(1.0)
    # CIDEr-D: identical candidate, one reference, n-grams unique to their item → cosine 1 for n = 1..4,
    # no length penalty, ×10 → exactly 10
    assert out["CIDEr-D"] == pytest.approx(10.0)
    assert out["num_items"] == 3 and out["num_unpredicted"] == 0


def test_relative_order_and_per_item(meteor):
    refs = {"exact": ["a red circle on the left"], "close": ["a red circle on the left"],
            "off": ["a red circle on the left"], "empty": ["a red circle on the left"],
            "unpredicted": ["anything"]}
    preds = {"exact": "A red circle on the left.", "close": "a red circle at the left side",
             "off": "two blue squares", "empty": ""}
    out = caption_metrics(preds, refs, metrics=("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"), meteor=meteor,
                          return_per_item=True)
    per = out["per_item"]
    for m in ("METEOR", "ROUGE-L"):
        assert per[m]["exact"] > per[m]["close"] > per[m]["off"] >= per[m]["empty"] == 0.0, m
    # CIDEr-D's IDF comes from the evaluated set: every scored item has the same reference, so every
    # n-gram has df = N, idf = log(N / N) = 0 and even the exact caption scores 0.
    assert all(v == 0.0 for v in per["CIDEr-D"].values())
    assert per["METEOR"]["exact"] > 0.9  # tokenisation removed case and the final period
    assert per["BLEU-4"]["exact"] == pytest.approx(1.0, abs=1e-6)
    assert 0 < out["METEOR"] < 1 and out["num_unpredicted"] == 1


def test_meteor_scores_batch_and_edge_cases(meteor):
    pairs = [("a red circle", ["a red circle"]),
             ("a blue circle", ["a red circle"]),
             ("", ["a red circle"]),             # empty candidate
             ("a red circle", []),               # no reference: 0 without asking Java
             ("a red ||| circle\nnow", ["a red circle now"])]  # separators / newlines cannot break the protocol
    s = meteor_scores(pairs, meteor)
    assert len(s) == 5
    assert s[0] > 0.9 and 0 < s[1] < s[0]
    assert s[2] == 0.0 and s[3] == 0.0
    assert s[4] > 0.9


def test_ptb_tokenize_keeps_alignment_with_empty_captions():
    out = ptb_tokenize({"a": ["A Red, circle.", ""], "b": ["two\nlines!"], "c": [""]})
    assert out == {"a": ["a red circle", ""], "b": ["two lines"], "c": [""]}


def test_densecap_with_real_meteor(meteor):
    g = [{"image_id": 1, "boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "captions": ["red circle", "blue square"]}]
    good = [{"image_id": 1, "boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "scores": [0.9, 0.8],
             "captions": ["red circle", "blue square"]}]
    out = densecap_map(good, g, meteor_fn=meteor)
    assert out["map"] == pytest.approx(1.0) and out["map_detection"] == pytest.approx(1.0)
    bad = [dict(good[0], captions=["green triangle", "blue square"])]  # first box: wrong words, METEOR 0
    out = densecap_map(bad, g, meteor_fn=meteor)
    # at every (IoU, METEOR ≥ 0) threshold: tp [0, 1] → recall [0, .5], precision [0, .5] → AP = 51·.5/100
    assert out["map_detection"] == pytest.approx(1.0)
    assert out["map"] == pytest.approx(0.255)


def test_bad_inputs():
    with pytest.raises(ValueError, match="no references"):
        caption_metrics({9: "x"}, {1: ["y"]}, metrics=("ROUGE-L",), tokenize=False)
    with pytest.raises(ValueError, match="empty reference list"):
        caption_metrics({1: "x"}, {1: []}, metrics=("ROUGE-L",), tokenize=False)
    with pytest.raises(ValueError, match="unknown metrics"):
        caption_metrics({1: "x"}, {1: ["y"]}, metrics=("SPICE",))
