"""pixelllm.viz.Playground without a browser: every widget callback (pick an image, upload one, caption,
move the word slider, find an expression, describe a box, toggle the ground truth), driven through the
widgets' own events, against a predictor whose answers are known; and the overlay figure of each task."""
from __future__ import annotations

import datetime
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ipywidgets")

from pixelllm.viz.playground import Playground, figure_prediction  # noqa: E402


class FakePredictor:
    """Known answers in the result format of pixelllm.predict; records its calls."""

    def __init__(self):
        self.calls = []

    def caption(self, image):
        self.calls.append(("caption", np.asarray(image).shape))
        return {"task": "caption", "text": "a red circle", "tokens": ["▁a", "▁red", "▁circle"],
                "points": [[1, 1, 3, 3], [10, 20, 14, 24], [30, 5, 34, 9]],
                "words": [{"text": "a", "tokens": [0], "point": [2.0, 2.0]},
                          {"text": "red", "tokens": [1], "point": [12.0, 22.0]},
                          {"text": "circle", "tokens": [2], "point": [32.0, 7.0]}]}

    def segment(self, image, expr):
        self.calls.append(("segment", expr))
        h, w = np.asarray(image).shape[:2]
        m = np.zeros((h, w), bool)
        m[5:15, 8:20] = True
        return {"task": "segment", "expression": expr, "box": [8.0, 5.0, 20.0, 15.0], "mask_array": m,
                "area": int(m.sum()), "score": 0.9}

    def region(self, image, box):
        self.calls.append(("region", tuple(box)))
        h, w = np.asarray(image).shape[:2]
        if box[2] > w or box[3] > h:
            raise ValueError(f"box {box} lies outside the image ({w}×{h} pixels)")
        return {"task": "region", "box": list(box), "text": "a blue square", "tokens": ["▁a", "▁blue", "▁square"]}


def _examples():
    rng = np.random.default_rng(0)
    gt = {"boxes": np.array([[2.0, 3.0, 12.0, 13.0]]), "labels": ["circle"],
          "masks": np.pad(np.ones((10, 10), bool), ((3, 27), (2, 36))), "captions": ["a red circle"],
          "expressions": [{"text": "the red circle", "box": [2, 3, 12, 13]}]}
    return [{"image": rng.integers(0, 255, (40, 48, 3), dtype=np.uint8), "title": "test image 1", "gt": gt},
            {"image": rng.integers(0, 255, (30, 60, 3), dtype=np.uint8), "title": "test image 2",
             "gt": {"boxes": np.zeros((0, 4)), "labels": [], "captions": [], "expressions": []}}]


@pytest.fixture
def pg():
    return Playground(FakePredictor(), _examples(), panel=3.0, dpi=50)


def _gids(fig):
    ax = fig.axes[0]
    return {a.get_gid() for a in [*ax.patches, *ax.collections, *ax.texts] if a.get_gid()}


def test_opens_on_the_first_image(pg):
    assert pg.index == 0 and pg.image.value[:4] == b"\x89PNG"
    assert pg.expr_text.value == "the red circle"                      # first ground-truth expression
    assert [f.value for f in pg.box_fields] == [2.0, 3.0, 12.0, 13.0]  # first ground-truth box
    assert pg.word_slider.disabled


def test_select_image_callback(pg):
    pg.dropdown.value = 1                                  # the widget event
    assert pg.index == 1 and pg.result is None
    assert "60×30 pixels" in pg.status.value
    assert [f.value for f in pg.box_fields] == [15.0, 7.5, 45.0, 22.5]  # no gt box: the centre half
    with pytest.raises(IndexError):
        pg.select_image(5)


def test_caption_and_word_slider(pg):
    pg.caption_button.click()
    assert pg.predictor.calls[-1] == ("caption", (40, 48, 3))
    assert pg.words == ["a", "red", "circle"] and not pg.word_slider.disabled and pg.word_slider.max == 2
    assert pg.word == 0 and "word 1/3: <b>a</b>" in pg.status.value
    pg.word_slider.value = 2                               # slider moved: word 2 and its point highlighted
    assert pg.word == 2 and "<b>circle</b> at (32, 7)" in pg.status.value
    ax = pg.figure.axes[0]
    cur = [c for c in ax.collections if c.get_gid() == "word_points:current"]
    assert len(cur) == 1 and np.allclose(cur[0].get_offsets(), [[32.0, 7.0]])
    cap = pg.figure.axes[1]
    boxed = [t for t in cap.texts if t.get_bbox_patch() is not None]
    assert [t.get_gid() for t in boxed] == ["caption_word:2"]
    pg.highlight_word(1)                                   # called directly: the slider follows
    assert pg.word_slider.value == 1 and pg.word == 1
    with pytest.raises(IndexError):
        pg.highlight_word(3)


def test_expression_callback(pg):
    pg.expr_text.value = "the green square"
    pg.expr_button.click()
    assert pg.predictor.calls[-1] == ("segment", "the green square")
    assert pg.result["task"] == "segment" and pg.word_slider.disabled
    assert "mask 120 px" in pg.status.value
    g = _gids(pg.figure)
    assert {"box:0", "mask_outline:0", "box_label:0"} <= g
    assert pg.run_expression("the blue one")["expression"] == "the blue one" and pg.expr_text.value == "the blue one"


def test_region_callback_and_error(pg):
    for f, v in zip(pg.box_fields, (4, 5, 30, 25)):
        f.value = v
    pg.region_button.click()
    assert pg.predictor.calls[-1] == ("region", (4.0, 5.0, 30.0, 25.0))
    assert "a blue square" in pg.status.value and "box:0" in _gids(pg.figure)
    before = pg.result
    assert pg.run_region([0, 0, 100, 10]) is None          # outside: reported, not raised, nothing replaced
    assert "lies outside" in pg.status.value and pg.result is before


def test_ground_truth_toggle(pg):
    assert "gt_box:0" not in _gids(pg.figure)
    pg.gt_checkbox.value = True
    g = _gids(pg.figure)
    assert {"gt_box:0", "gt_mask_outline:0", "gt_box_label:0"} <= g
    assert "ground truth: a red circle" in pg.figure.axes[0].get_title()
    pg.caption_button.click()                              # the ground truth stays on under a prediction
    assert "gt_box:0" in _gids(pg.figure) and "word_points" in _gids(pg.figure)
    pg.gt_checkbox.value = False
    assert "gt_box:0" not in _gids(pg.figure)


def test_upload_callback(pg):
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 36, 3), 200, np.uint8)).save(buf, format="PNG")
    pg.upload_button.value = ({"name": "mine.png", "type": "image/png", "size": len(buf.getvalue()),
                               "content": memoryview(buf.getvalue()),
                               "last_modified": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)},)   # the widget event
    assert pg.index == 2 and pg.examples[2]["title"] == "upload: mine.png" and pg.dropdown.value == 2
    assert pg.examples[2]["image"].shape == (20, 36, 3)
    pg.show_ground_truth(True)
    assert "no ground truth" in pg.status.value
    pg.caption_button.click()
    assert pg.predictor.calls[-1] == ("caption", (20, 36, 3))
    assert pg.upload("bad.png", b"not an image") == -1 and "cannot read bad.png" in pg.status.value
    assert len(pg.examples) == 3


def test_figure_prediction_of_each_task():
    img = np.zeros((40, 48, 3), np.uint8)
    fp = FakePredictor()
    cap = figure_prediction(img, fp.caption(img), highlight=1)
    assert "word_points:current" in _gids(cap) and "“red”" in cap.axes[0].get_title()
    seg = fp.segment(img, "x")
    rle_only = {k: v for k, v in seg.items() if k != "mask_array"}
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(seg["mask_array"].astype(np.uint8)))
    rle_only["mask"] = {"size": list(r["size"]), "counts": r["counts"].decode()}
    assert "mask_outline:0" in _gids(figure_prediction(img, rle_only))
    dense = {"task": "dense", "regions": [{"box": [1, 1, 9, 9], "score": 0.8, "text": "a"},
                                          {"box": [20, 5, 30, 20], "score": 0.5, "text": "b"}]}
    assert {"box:0", "box:1"} <= _gids(figure_prediction(img, dense))
    empty = figure_prediction(img, {"task": "caption", "tokens": ["<pad>", "<pad>"], "points": [[0, 0, 1, 1]] * 2,
                                    "words": []})
    assert "empty" in empty.axes[0].get_title() and not empty.axes[1].texts      # no <pad> written out
    with pytest.raises(ValueError, match="not one of"):
        figure_prediction(img, {"task": "nope"})
