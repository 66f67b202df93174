"""Spatial language: positions (image thirds), relations, descriptors, the referring-expression grammar
(parsing and resolution against a scene) and the enumeration of unique referring expressions.

Every function here accepts a :class:`~pixelllm.data.synthetic.scene.Scene` or a ``scenes.json`` image
dict, so evaluation code can resolve expressions against the written ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pixelllm.data import vocab as V
from pixelllm.data.synthetic.constants import EXPRESSION_CLASSES, NEXT_TO_MAX_GAP, RELATION_MIN_OFFSET
from pixelllm.data.synthetic.scene import Scene


def _obj_view(o: Any) -> tuple[int, str, str, str, list[float]]:
    """(id, shape, color, size, bbox) of a SceneObject or a ``scenes.json`` object dict."""
    if isinstance(o, dict):
        return int(o["id"]), o["shape"], o["color"], o["size"], list(o["bbox"])
    return o.id, o.shape, o.color, o.size, list(o.bbox)


def _scene_view(scene: Any) -> tuple[int, int, list[tuple[int, str, str, str, list[float]]]]:
    if isinstance(scene, dict):
        return int(scene["width"]), int(scene["height"]), [_obj_view(o) for o in scene["objects"]]
    return scene.width, scene.height, [_obj_view(o) for o in scene.objects]


def position_of(bbox: Sequence[float], width: int, height: int) -> tuple[str, str]:
    """(column, row) of a box centre by image thirds: column in left/center/right, row in
    top/middle/bottom. ``bbox`` = [x, y, w, h] pixels."""
    x, y, w, h = bbox
    cx, cy = (x + w / 2) / width, (y + h / 2) / height
    col = "left" if cx < 1 / 3 else ("right" if cx >= 2 / 3 else "center")
    row = "top" if cy < 1 / 3 else ("bottom" if cy >= 2 / 3 else "middle")
    return col, row


def position_phrase(bbox: Sequence[float], width: int, height: int) -> str:
    """Narrative phrase for where a box is, e.g. "on the left", "in the bottom right corner"."""
    return V.POSITION_PHRASES[position_of(bbox, width, height)]


def relation_holds(rel: str, a: Sequence[float], b: Sequence[float], width: int, height: int) -> bool:
    """Does "A <rel> B" hold for visible boxes ``a`` and ``b`` ([x, y, w, h] pixels)?

    left of / right of / above / below: the centre offset along that axis exceeds
    :data:`RELATION_MIN_OFFSET`·side and dominates the other axis. next to: the gap between the two
    boxes is at most :data:`NEXT_TO_MAX_GAP`·side.
    """
    acx, acy = a[0] + a[2] / 2, a[1] + a[3] / 2
    bcx, bcy = b[0] + b[2] / 2, b[1] + b[3] / 2
    dx, dy = bcx - acx, bcy - acy                              # from A to B
    tx, ty = RELATION_MIN_OFFSET * width, RELATION_MIN_OFFSET * height
    if rel == "left of":
        return dx > tx and abs(dy) < abs(dx)
    if rel == "right of":
        return -dx > tx and abs(dy) < abs(dx)
    if rel == "above":
        return dy > ty and abs(dx) < abs(dy)
    if rel == "below":
        return -dy > ty and abs(dx) < abs(dy)
    if rel == "next to":
        gx = max(0.0, max(b[0] - (a[0] + a[2]), a[0] - (b[0] + b[2]))) / width
        gy = max(0.0, max(b[1] - (a[1] + a[3]), a[1] - (b[1] + b[3]))) / height
        return max(gx, gy) <= NEXT_TO_MAX_GAP
    raise ValueError(f"unknown relation {rel!r}; known: {V.RELATIONS}")


@dataclass(frozen=True)
class Descriptor:
    """``[size] [color] shape`` — any of size/color may be None (= unconstrained)."""
    shape: str
    color: str | None = None
    size: str | None = None

    def matches(self, shape: str, color: str, size: str) -> bool:
        return (shape == self.shape and (self.color is None or color == self.color)
                and (self.size is None or size == self.size))

    def text(self) -> str:
        return " ".join(w for w in (self.size, self.color, self.shape) if w)


@dataclass(frozen=True)
class ParsedExpression:
    """``the <target> [<relation> (the|a) <landmark>]``."""
    target: Descriptor
    relation: str | None = None
    landmark: Descriptor | None = None
    landmark_definite: bool = True

    @property
    def difficulty(self) -> str:
        """"spatial" (uses a relation) > "disambiguating" (uses a size word) > "attribute"."""
        if self.relation is not None:
            return "spatial"
        return "disambiguating" if self.target.size is not None else "attribute"


def _parse_descriptor(words: list[str], i: int, expr: str) -> tuple[Descriptor, int]:
    size = color = None
    if i < len(words) and words[i] in V.SIZES:
        size, i = words[i], i + 1
    if i < len(words) and words[i] in V.COLORS:
        color, i = words[i], i + 1
    if i >= len(words) or words[i] not in V.SHAPES:
        got = words[i] if i < len(words) else "<end>"
        raise ValueError(f"cannot parse referring expression {expr!r}: expected a shape {V.SHAPES} "
                         f"at word {i}, got {got!r}")
    return Descriptor(shape=words[i], color=color, size=size), i + 1


def parse_expression(expr: str) -> ParsedExpression:
    """Parse an expression of the synthetic grammar::

        expr     := "the" desc [relation ("the" | "a" | "an") desc]
        desc     := [size] [color] shape
        relation := "left of" | "right of" | "above" | "below" | "next to"

    Case, surrounding whitespace and a final period are ignored. Raises ValueError naming the word.
    """
    words = expr.strip().rstrip(".").lower().split()
    if not words or words[0] != "the":
        raise ValueError(f"cannot parse referring expression {expr!r}: must start with 'the'")
    target, i = _parse_descriptor(words, 1, expr)
    if i == len(words):
        return ParsedExpression(target)
    rel = next((r for r in V.RELATIONS if words[i:i + len(r.split())] == r.split()), None)
    if rel is None:
        raise ValueError(f"cannot parse referring expression {expr!r}: expected a relation "
                         f"{V.RELATIONS} at word {i}, got {words[i]!r}")
    i += len(rel.split())
    if i >= len(words) or words[i] not in ("the", "a", "an"):
        raise ValueError(f"cannot parse referring expression {expr!r}: expected 'the', 'a' or 'an' at word {i}")
    definite = words[i] == "the"
    landmark, i = _parse_descriptor(words, i + 1, expr)
    if i != len(words):
        raise ValueError(f"cannot parse referring expression {expr!r}: trailing words {words[i:]}")
    return ParsedExpression(target, rel, landmark, definite)


def resolve_expression(scene: Scene | dict, expr: str) -> list[int]:
    """Ids of the objects of ``scene`` (a :class:`Scene` or a ``scenes.json`` image dict) that ``expr``
    refers to, by the grammar of :func:`parse_expression`.

    A definite landmark ("... left of the blue star") must itself be unique, else nothing is referred
    to ([]); an indefinite one ("... left of a star") needs any matching object. The target must differ
    from the landmark. The generator emits only expressions for which this returns exactly one id.
    """
    p = parse_expression(expr)
    W, H, objs = _scene_view(scene)
    cands = [o for o in objs if p.target.matches(o[1], o[2], o[3])]
    if p.relation is None:
        return [o[0] for o in cands]
    lms = [o for o in objs if p.landmark.matches(o[1], o[2], o[3])]
    if p.landmark_definite and len(lms) != 1:
        return []
    return [o[0] for o in cands
            if any(l[0] != o[0] and relation_holds(p.relation, o[4], l[4], W, H) for l in lms)]


def landmark_names(scene: Scene | dict) -> dict[int, Descriptor | None]:
    """Object id -> its shortest unique description (shape; colour shape; size shape; size colour
    shape), or None when even the full description is ambiguous (identical twins)."""
    _, _, objs = _scene_view(scene)
    out = {}
    for l in objs:
        out[l[0]] = next((d for d in (Descriptor(l[1]), Descriptor(l[1], l[2]), Descriptor(l[1], None, l[3]),
                                      Descriptor(l[1], l[2], l[3]))
                          if resolve_expression(scene, "the " + d.text()) == [l[0]]), None)
    return out


def referring_expressions(scene: Scene | dict, target_id: int,
                          landmarks: dict[int, Descriptor | None] | None = None) -> dict[str, list[str]]:
    """Every expression of the grammar that picks out exactly ``target_id`` (checked with
    :func:`resolve_expression`), grouped by difficulty class (:data:`EXPRESSION_CLASSES`).
    Spatial expressions name the landmark by :func:`landmark_names` (pass it to reuse it)."""
    W, H, objs = _scene_view(scene)
    landmarks = landmark_names(scene) if landmarks is None else landmarks
    t = next(o for o in objs if o[0] == target_id)
    _, shape, color, size, bbox = t
    out: dict[str, list[str]] = {c: [] for c in EXPRESSION_CLASSES}

    def unique(e: str) -> bool:
        return resolve_expression(scene, e) == [target_id]

    for d in (Descriptor(shape), Descriptor(shape, color)):
        if unique("the " + d.text()):
            out["attribute"].append("the " + d.text())
    for d in (Descriptor(shape, None, size), Descriptor(shape, color, size)):
        if unique("the " + d.text()):
            out["disambiguating"].append("the " + d.text())
    for l in objs:
        if l[0] == target_id:
            continue
        lm = landmarks[l[0]]
        if lm is None:
            continue
        for rel in V.RELATIONS:
            if not relation_holds(rel, bbox, l[4], W, H):
                continue
            for d in (Descriptor(shape), Descriptor(shape, color)):
                e = f"the {d.text()} {rel} the {lm.text()}"
                if unique(e):
                    out["spatial"].append(e)
                    break
    return out
