"""region_attribute_accuracy, its chance baselines, and the box-to-object matching of the region-caption task."""
from __future__ import annotations

import pytest

from pixelllm.data.vocab import COLORS, SHAPES
from pixelllm.eval.region_attributes import (box_blind_chance, majority_chance, phrase_attributes,
                                             region_attribute_accuracy)
from pixelllm.tasks.region_caption import region_attribute_targets, score_region_attributes


@pytest.mark.parametrize("text, expected", [
    ("big green cross next to a red circle", ("green", "cross")),
    ("the small Yellow Triangle.", ("yellow", "triangle")),
    ("the circle left of the blue star", (None, "circle")),
    ("two red crosses", ("red", "cross")),
    ("a purple thing", ("purple", None)),
    ("", (None, None)),
])
def test_phrase_attributes_read_the_subject(text, expected):
    assert phrase_attributes(text, list(COLORS), SHAPES) == expected


def test_accuracy_needs_colour_and_shape():
    preds = ["red circle", "blue circle", "red square next to a red circle", "the star"]
    targets = [("red", "circle"), ("red", "circle"), ("red", "circle"), ("green", "star")]
    m = region_attribute_accuracy(preds, targets, list(COLORS), SHAPES)
    assert m["region_attribute_accuracy"] == pytest.approx(1 / 4)
    assert m["colour_accuracy"] == pytest.approx(2 / 4)
    assert m["shape_accuracy"] == pytest.approx(3 / 4)
    assert m["num_regions"] == 4


def test_accuracy_rejects_mismatched_or_unknown_targets():
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        region_attribute_accuracy(["a", "b"], [("red", "circle")], list(COLORS), SHAPES)
    with pytest.raises(ValueError, match="target 0"):
        region_attribute_accuracy(["a"], [("pink", "circle")], list(COLORS), SHAPES)


def test_box_blind_chance_is_the_share_of_same_looking_objects_in_the_image():
    objs = {1: [("red", "circle"), ("red", "circle"), ("blue", "star")], 2: [("green", "square")]}
    # image 1: regions of a red circle (2/3 each) and the blue star (1/3); image 2: its only object (1)
    tg = [("red", "circle"), ("red", "circle"), ("blue", "star"), ("green", "square")]
    assert box_blind_chance(tg, [1, 1, 1, 2], objs) == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1) / 4)
    assert majority_chance(tg) == pytest.approx(2 / 4)
    with pytest.raises(KeyError, match="image 3"):
        box_blind_chance(tg[:1], [3], objs)


def test_regions_are_matched_to_the_object_of_highest_iou():
    objects = {7: [{"color": "red", "shape": "circle", "bbox": [0, 0, 10, 10]},
                   {"color": "blue", "shape": "star", "bbox": [20, 20, 10, 10]}]}
    results = [{"image_id": 7, "bbox": [21, 20, 10, 11], "text": "blue star"},        # jittered star box
               {"image_id": 7, "bbox": [0, 0, 10, 10], "text": "blue circle"},        # exact circle box
               {"image_id": 7, "bbox": [50, 50, 5, 5], "text": "red circle"},         # nothing there: skipped
               {"image_id": 8, "bbox": [0, 0, 5, 5], "text": "red circle"}]           # unknown image: skipped
    assert region_attribute_targets(results, objects) == [("blue", "star"), ("red", "circle"), None, None]
    m = score_region_attributes(results, objects)
    assert m["num_regions"] == 2 and m["num_skipped"] == 2
    assert m["region_attribute_accuracy"] == pytest.approx(0.5)
    assert m["chance_box_blind"] == pytest.approx(0.5)       # 1 of the image's 2 objects looks like each target
