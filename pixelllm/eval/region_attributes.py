"""Does a region caption name the prompted object? Colour + shape accuracy of location-conditioned captions.

Caption metrics (CIDEr-D, METEOR) reward the words a region phrase shares with its references, so a
captioner that ignores the box and always names the image's most salient object still scores. The
synthetic world knows each region's object, so we can ask the question directly (PAPER_NOTES.md §3):

    region_attribute_accuracy = 1/R Σ_r [colour(phrase_r) = colour(o_r) ∧ shape(phrase_r) = shape(o_r)]

where ``phrase_r`` is the caption generated for region r and o_r the object its box covers. The phrase's
*subject* is read: its first shape word and the colour word before it ("blue square left of a red circle"
→ (blue, square)), so naming the prompted object only as a relation's landmark does not count.

Chance (:func:`box_blind_chance`): a captioner that cannot see the box, but describes one object of the
image perfectly, is right for region r with probability (# objects of r's image with o_r's colour and
shape) / (# objects of the image) when it picks an object uniformly — the ceiling of every box-ignoring
model that does not prefer the right object by luck. :func:`majority_chance` is the other classic
baseline: always the most frequent (colour, shape) pair of the evaluated regions.

The vocabulary is an argument (the synthetic world's is ``pixelllm.data.vocab.COLORS`` / ``SHAPES``).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Hashable, Optional, Sequence

_WORD = re.compile(r"[a-z]+")

Attributes = tuple[Optional[str], Optional[str]]


def shape_forms(shapes: Sequence[str]) -> dict[str, str]:
    """Singular and plural word → shape ("crosses" → "cross", "stars" → "star")."""
    out = {s: s for s in shapes}
    out.update({(s + "es" if s.endswith(("s", "x", "ch", "sh")) else s + "s"): s for s in shapes})
    return out


def phrase_attributes(text: str, colours: Sequence[str], shapes: Sequence[str]) -> Attributes:
    """(colour, shape) of a phrase's subject: the first shape word (singular) and the last colour word
    before it; None for what the phrase does not name (a colour after the first shape word does not count).

    >>> phrase_attributes("big green cross next to a red circle", ["green", "red"], ["cross", "circle"])
    ('green', 'cross')
    >>> phrase_attributes("the circle left of the blue star", ["blue"], ["circle", "star"])
    (None, 'circle')
    """
    if not isinstance(text, str):
        raise TypeError(f"phrase_attributes: expected a string, got {type(text).__name__}")
    forms, colours = shape_forms(shapes), set(colours)
    colour = None
    for w in _WORD.findall(text.lower()):
        if w in forms:
            return colour, forms[w]
        if w in colours:
            colour = w
    return colour, None


def region_attribute_accuracy(predictions: Sequence[str], targets: Sequence[tuple[str, str]],
                              colours: Sequence[str], shapes: Sequence[str]) -> dict:
    """Fraction of regions whose predicted phrase names the target (colour, shape) — both right
    (``region_attribute_accuracy``) — and each alone (``colour_accuracy``, ``shape_accuracy``), with
    ``num_regions``. ``predictions[i]`` is the caption of the region whose object has ``targets[i]``."""
    if len(predictions) != len(targets):
        raise ValueError(f"region_attribute_accuracy: {len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise ValueError("region_attribute_accuracy: no regions")
    for i, (c, s) in enumerate(targets):
        if c not in colours or s not in shapes:
            raise ValueError(f"region_attribute_accuracy: target {i} = {(c, s)!r} is not a (colour, shape) of the "
                             f"vocabulary")
    got = [phrase_attributes(p, colours, shapes) for p in predictions]
    col = [g[0] == t[0] for g, t in zip(got, targets)]
    shp = [g[1] == t[1] for g, t in zip(got, targets)]
    n = len(targets)
    return {"region_attribute_accuracy": sum(a and b for a, b in zip(col, shp)) / n,
            "colour_accuracy": sum(col) / n, "shape_accuracy": sum(shp) / n, "num_regions": n}


def box_blind_chance(targets: Sequence[tuple[str, str]], image_ids: Sequence[Hashable],
                     image_objects: dict[Hashable, Sequence[tuple[str, str]]]) -> float:
    """Expected region_attribute_accuracy of naming a uniformly random object of the region's image:
    mean over regions r of |{o ∈ objects(image_r) : attrs(o) = targets[r]}| / |objects(image_r)|.
    ``image_objects[image_id]`` lists the (colour, shape) of every object of that image."""
    if len(targets) != len(image_ids):
        raise ValueError(f"box_blind_chance: {len(targets)} targets for {len(image_ids)} image ids")
    if not targets:
        raise ValueError("box_blind_chance: no regions")
    total = 0.0
    for t, i in zip(targets, image_ids):
        objs = image_objects.get(i)
        if not objs:
            raise KeyError(f"box_blind_chance: no objects listed for image {i!r}")
        total += sum(tuple(o) == tuple(t) for o in objs) / len(objs)
    return total / len(targets)


def majority_chance(targets: Sequence[tuple[str, str]]) -> float:
    """Accuracy of always naming the most frequent (colour, shape) pair of ``targets``."""
    if not targets:
        raise ValueError("majority_chance: no regions")
    return Counter(tuple(t) for t in targets).most_common(1)[0][1] / len(targets)
