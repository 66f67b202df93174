"""A deterministic synthetic world written in the REAL dataset formats (PAPER_NOTES.md §6).

Each scene is a textured background with 1–6 coloured shapes (vocabulary in :mod:`pixelllm.data.vocab`),
possibly partly occluding each other. For every scene the generator writes (layout of
``docs/ARCHITECTURE.md`` "Synthetic data folder layout")::

    images/{image_id:012d}.jpg                        JPEG q95, RGB, S×S (default 128)
    scenes.json                                       ground-truth scene graph (for tests and eval)
    captions/captions_{split}.json                    COCO captions: 5 short captions per image
    coco/instances_{split}.json                       COCO instances: visible-part RLE masks, bbox xywh
    localized_narratives/synthetic_{split}_localized_narratives.jsonl   official LN schema
    refcoco/refs(unc).p, refcoco/instances.json       refer API format, splits train/val/testA/testB
    vg/region_descriptions.json, vg/image_data.json, vg/densecap_splits.json
    stats.json                                        counts returned by :func:`generate`

Coordinate frames: everything in pixels of the original S×S image (x right, y down, origin top-left),
except Localized Narratives traces which are normalised to [0, 1] by the image size (and may lie
outside it, as in the real data). A pixel (row i, column j) covers [j, j+1)×[i, i+1); its centre is
(j + 0.5, i + 0.5). Boxes are ``[x, y, w, h]`` of the *visible* mask (``pycocotools.mask.toBbox``).

Determinism: scene ``image_id`` draws everything from ``np.random.default_rng([seed, image_id])``, so
the output is byte-identical for a given seed whatever the number of workers or the chunking; all
sequential ids (captions, refs, sentences, VG regions) are assigned after merging, in image-id order.

Learnability by construction: narrative object words are spoken while the simulated mouse hovers over
that object; position phrases are computed from where the object actually is (image thirds); every
referring expression is checked with :func:`resolve_expression` to pick out exactly one object.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pixelllm.data import vocab as V

#: Default probability of each real-world oddity (zero-length utterance, integer times, missing trace,
#: trailing space in a VG phrase, VG box with negative x/y), per record / image.
DEFAULT_ODDITY_RATE = 0.02
#: Pointer positions up to this far outside [0, 1] are recorded (the band around the image real LN
#: recordings keep); leaving the band ends a trace segment.
TRACE_BAND = 0.1
#: Minimum fraction of an object's full shape that must stay visible after occlusion.
MIN_VISIBLE_FRACTION = 0.6
#: Relations need a centre offset of at least this fraction of the image side along their axis.
RELATION_MIN_OFFSET = 0.06
#: "next to": the gap between the two visible boxes is at most this fraction of the image side.
NEXT_TO_MAX_GAP = 0.06
#: Distribution of the number of objects per image (1..6).
N_OBJECTS_P = (0.08, 0.20, 0.24, 0.22, 0.15, 0.11)
SPLITS = ("train", "val", "test")
EXPRESSION_CLASSES = ("attribute", "disambiguating", "spatial")


# =================================================================================================
# Scenes
# =================================================================================================
@dataclass
class SceneObject:
    """One shape in a scene.

    ``cx, cy, radius``: centre and half-extent of the full (unoccluded) shape, pixels.
    ``bbox``: ``[x, y, w, h]`` of the visible part, pixels (as ``pycocotools.mask.toBbox``).
    ``area``: number of visible pixels. ``id``: global COCO annotation id = ``image_id * 10 + index``.
    """
    id: int
    shape: str
    color: str
    size: str
    cx: float
    cy: float
    radius: float
    bbox: list[float] = field(default_factory=list)
    area: int = 0

    @property
    def center(self) -> tuple[float, float]:
        """Centre (x, y) of the visible box, pixels."""
        x, y, w, h = self.bbox
        return x + w / 2.0, y + h / 2.0

    def to_json(self) -> dict:
        return {"id": self.id, "shape": self.shape, "color": self.color, "size": self.size,
                "bbox": [float(v) for v in self.bbox], "area": int(self.area)}


@dataclass
class Scene:
    """A scene: objects in paint order (back to front), a background tone and a texture seed
    (the pixel noise is re-drawn from it by :func:`render_scene`). Sizes in pixels."""
    image_id: int
    width: int
    height: int
    objects: list[SceneObject]
    background: str
    texture_seed: int
    split: str = "train"

    @property
    def file_name(self) -> str:
        return f"{self.image_id:012d}.jpg"

    def to_json(self) -> dict:
        """The ``scenes.json`` entry (ARCHITECTURE.md)."""
        return {"image_id": self.image_id, "file_name": self.file_name, "width": self.width,
                "height": self.height, "split": self.split, "objects": [o.to_json() for o in self.objects]}


def shape_mask(shape: str, cx: float, cy: float, r: float, height: int, width: int) -> np.ndarray:
    """Boolean H×W mask of a full shape centred at (cx, cy) with half-extent r (pixels), sampled at
    pixel centres. Only the window around the shape is evaluated (vectorised numpy)."""
    x0, x1 = max(int(math.floor(cx - r)) - 1, 0), min(int(math.ceil(cx + r)) + 1, width)
    y0, y1 = max(int(math.floor(cy - r)) - 1, 0), min(int(math.ceil(cy + r)) + 1, height)
    out = np.zeros((height, width), dtype=bool)
    if x0 >= x1 or y0 >= y1:
        return out
    dx = (np.arange(x0, x1) + 0.5 - cx)[None, :]            # 1×w
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]            # h×1
    if shape == "circle":
        m = dx * dx + dy * dy <= r * r
    elif shape == "square":
        m = (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    elif shape == "diamond":                                  # taller than wide: never a rotated square
        m = np.abs(dx) / (0.72 * r) + np.abs(dy) / r <= 1.0
    elif shape == "cross":                                    # a plus sign
        arm, half = 0.34 * r, 0.95 * r
        m = ((np.abs(dx) <= arm) & (np.abs(dy) <= half)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= half))
    elif shape == "triangle":                                 # apex up at -r, base at +0.7r
        m = (dy <= 0.7 * r) & (np.abs(dx) <= 0.95 * r * (dy + r) / (1.7 * r))
    elif shape == "star":                                     # 5 points, one up; inner radius 0.45 r
        # Star-shaped polygon in polar form: fold the angle into [0, pi/5] (between an outer and an
        # inner vertex) and compare the radius with the distance to that edge along the ray.
        ri, a = 0.45 * r, math.pi / 5
        theta = np.arctan2(dy, dx) + math.pi / 2              # 0 = pointing up
        phi = np.mod(theta, 2 * a)
        phi = np.minimum(phi, 2 * a - phi)
        nx, ny = ri * math.sin(a), r - ri * math.cos(a)       # normal of the edge (r,0)-(ri cos a, ri sin a)
        edge = (r * ri * math.sin(a)) / (nx * np.cos(phi) + ny * np.sin(phi))
        m = dx * dx + dy * dy <= edge * edge
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {V.SHAPES}")
    out[y0:y1, x0:x1] = m
    return out


def _bbox_of(mask: np.ndarray) -> list[float]:
    """``[x, y, w, h]`` of a boolean mask in pixels (same numbers as ``pycocotools.mask.toBbox``)."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    if len(cols) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _full_masks(scene: Scene) -> list[np.ndarray]:
    return [shape_mask(o.shape, o.cx, o.cy, o.radius, scene.height, scene.width) for o in scene.objects]


def _visible_from_full(full: list[np.ndarray], height: int, width: int) -> np.ndarray:
    out = np.zeros((len(full), height, width), dtype=bool)
    cover = np.zeros((height, width), dtype=bool)
    for i in range(len(full) - 1, -1, -1):                    # front to back
        out[i] = full[i] & ~cover
        cover |= full[i]
    return out


def visible_masks(scene: Scene) -> np.ndarray:
    """N×H×W bool: each object's visible part (its shape minus every object painted after it)."""
    return _visible_from_full(_full_masks(scene), scene.height, scene.width)


def sample_scene(rng: np.random.Generator, image_size: int = 128, image_id: int = 1,
                 split: str = "train", next_to_prob: float = 0.35, distractor_prob: float = 0.3) -> Scene:
    """Draw one scene: 1–6 objects, random shape/colour/size and position, some placed next to an
    earlier object (``next_to_prob``), some repeating an earlier object's shape (and, half the time,
    colour) as a distractor (``distractor_prob``) so that referring expressions need colour, size or a
    relation, as in RefCOCO where every image holds several objects of the target's category. Occlusion is allowed but each object keeps at least
    :data:`MIN_VISIBLE_FRACTION` of its pixels; overlapping objects never share a colour.
    Whole shapes lie inside the S×S image. Returns the scene with visible bbox/area filled in."""
    S = int(image_size)
    if S < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {S}")
    n = int(rng.choice(len(N_OBJECTS_P), p=N_OBJECTS_P)) + 1
    objs: list[SceneObject] = []
    full: list[np.ndarray] = []
    vis: list[np.ndarray] = []
    for k in range(n):
        for _attempt in range(40):
            shape = V.SHAPES[rng.integers(len(V.SHAPES))]
            color = list(V.COLORS)[rng.integers(len(V.COLORS))]
            size = list(V.SIZES)[rng.integers(len(V.SIZES))]
            if objs and rng.random() < distractor_prob:
                twin = objs[rng.integers(len(objs))]
                shape = twin.shape
                color = twin.color if rng.random() < 0.5 else color
            r = V.SIZES[size] * S * rng.uniform(0.93, 1.07)
            if objs and rng.random() < next_to_prob:
                a = objs[rng.integers(len(objs))]
                ang, d = rng.uniform(0, 2 * math.pi), (a.radius + r) * rng.uniform(1.05, 1.35)
                cx, cy = a.cx + d * math.cos(ang), a.cy + d * math.sin(ang)
                if not (r <= cx <= S - r and r <= cy <= S - r):
                    continue
            else:
                cx, cy = rng.uniform(r, S - r), rng.uniform(r, S - r)
            if any(math.hypot(cx - o.cx, cy - o.cy) < 0.6 * (r + o.radius) for o in objs):
                continue
            m = shape_mask(shape, cx, cy, r, S, S)
            overlaps = [j for j in range(len(objs)) if (full[j] & m).any()]
            if any(objs[j].color == color for j in overlaps):
                continue
            if any((vis[j] & ~m).sum() < MIN_VISIBLE_FRACTION * full[j].sum() for j in overlaps):
                continue
            for j in overlaps:
                vis[j] = vis[j] & ~m
            objs.append(SceneObject(id=image_id * 10 + k, shape=shape, color=color, size=size,
                                    cx=float(cx), cy=float(cy), radius=float(r)))
            full.append(m)
            vis.append(m.copy())
            break
    for o, m in zip(objs, vis):
        o.bbox, o.area = _bbox_of(m), int(m.sum())
    background = list(V.BACKGROUNDS)[rng.integers(len(V.BACKGROUNDS))]
    return Scene(image_id=image_id, width=S, height=S, objects=objs, background=background,
                 texture_seed=int(rng.integers(2**31 - 1)), split=split)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """n_out×n_in linear-interpolation weights (pixel centres) to upsample a coarse noise grid."""
    pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - i0
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), i0] = 1 - frac
    m[np.arange(n_out), i0 + 1] = frac
    return m


def render_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Paint a scene. Returns ``(image, masks)``: image H×W×3 uint8 RGB; masks N×H×W bool, the
    visible part of each object (the exact instance masks written to the annotations)."""
    H, W = scene.height, scene.width
    rng = np.random.default_rng(scene.texture_seed)
    base = np.asarray(V.BACKGROUNDS[scene.background], dtype=np.float32)
    g = 6                                                      # low-frequency "paper" texture
    low = (_interp_matrix(H, g) @ rng.normal(size=(g, g)) @ _interp_matrix(W, g).T).astype(np.float32)
    img = base + 14.0 * low[..., None] + rng.normal(0, 3.0, size=3).astype(np.float32)     # H×W×3
    if rng.random() < 0.5:                                     # faint stripes
        ang, period = rng.uniform(0, math.pi), rng.uniform(5, 14)
        phase = (np.arange(W) * math.cos(ang))[None, :] + (np.arange(H) * math.sin(ang))[:, None]
        img += (6.0 * np.sin(2 * math.pi * phase / period)).astype(np.float32)[..., None]
    full = _full_masks(scene)
    for o, m in zip(scene.objects, full):                      # paint back to front
        rows = np.nonzero(m)[0]                                # row of every shape pixel, row-major order
        col = np.asarray(V.COLORS[o.color], dtype=np.float32) + rng.uniform(-10, 10)
        img[m] = col[None, :] + (rng.uniform(-10, 10) * (rows / H - 0.5)).astype(np.float32)[:, None]
    img += 4.5 * rng.standard_normal(size=(H, W, 3), dtype=np.float32)                     # pixel noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), _visible_from_full(full, H, W)


# =================================================================================================
# Spatial language: positions, relations, referring expressions
# =================================================================================================
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


# =================================================================================================
# Text: captions, narratives (with mouse traces), region phrases
# =================================================================================================
def _join_and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _a(word: str) -> str:
    """Indefinite article for the next word ("an orange star", "a red star")."""
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def captions_for_scene(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` short COCO-style captions (lower case, no final period), e.g.
    "a big red circle and a small blue star", "two shapes on a grey background"."""
    objs = sorted(scene.objects, key=lambda o: o.center[0])           # left to right
    W, H = scene.width, scene.height
    bg = scene.background
    templates = []
    templates.append(_join_and([f"a {o.size} {o.color} {o.shape}" for o in objs]))
    if len(objs) == 1:
        templates.append(f"a single {objs[0].color} {objs[0].shape} on {_a(bg)} {bg} background")
    else:
        templates.append(f"{V.NUMBER_WORDS[len(objs)]} shapes on {_a(bg)} {bg} background")
    templates.append(_join_and([f"{_a(o.color)} {o.color} {o.shape} {position_phrase(o.bbox, W, H)}" for o in objs]))
    groups: dict[tuple[str, str], int] = {}
    for o in objs:
        groups[(o.color, o.shape)] = groups.get((o.color, o.shape), 0) + 1
    templates.append(_join_and([f"{_a(c)} {c} {s}" if k == 1 else f"{V.NUMBER_WORDS[k]} {c} {_plural(s)}"
                                for (c, s), k in groups.items()]))
    pairs = [(a, rel, b) for a in objs for b in objs if a is not b for rel in V.RELATIONS
             if relation_holds(rel, a.bbox, b.bbox, W, H)]
    if pairs:
        a, rel, b = pairs[rng.integers(len(pairs))]
        templates.append(f"{_a(a.color)} {a.color} {a.shape} {rel} {_a(b.color)} {b.color} {b.shape}")
    else:
        templates.append(f"a picture of a {objs[0].size} {objs[0].color} {objs[0].shape} on {_a(bg)} {bg} background")
    if n <= len(templates):
        return templates[:n]
    return templates + [templates[int(rng.integers(len(templates)))] for _ in range(n - len(templates))]


def region_phrases_for_object(scene: Scene, obj: SceneObject, rng: np.random.Generator) -> list[str]:
    """Candidate VG-style phrases for one object ("small blue star", "red circle next to a square")."""
    W, H = scene.width, scene.height
    out = [f"{obj.size} {obj.color} {obj.shape}", f"{obj.color} {obj.shape}",
           f"{obj.size} {obj.color} {obj.shape} {position_phrase(obj.bbox, W, H)}"]
    rel = [(r, b) for b in scene.objects if b is not obj for r in V.RELATIONS
           if relation_holds(r, obj.bbox, b.bbox, W, H)]
    if rel:
        r, b = rel[rng.integers(len(rel))]
        out.append(f"{obj.color} {obj.shape} {r} a {b.shape}")
    return out


_OPENINGS = ("In this image we can see", "In this picture we can see", "In this image I can see",
             "Here we can see")


def _narrative_units(scene: Scene, rng: np.random.Generator) -> list[tuple[list[str], Any, bool]]:
    """The narrative as (words, target, ends_sentence) units; target = object id, a region
    ("background": the whole image, "top": the top band) or None (connective words, during which the
    pointer moves)."""
    W, H = scene.width, scene.height
    u = rng.random()
    if u < 0.6:
        objs = sorted(scene.objects, key=lambda o: o.center[0])
    elif u < 0.8:
        objs = sorted(scene.objects, key=lambda o: o.center[1])
    else:
        objs = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    units: list[tuple[list[str], Any, bool]] = []

    def desc(o: SceneObject) -> list[str]:
        words = ([o.size] if rng.random() < 0.7 else []) + [o.color, o.shape]
        return [_a(words[0])] + words

    def pos(o: SceneObject) -> list[str]:
        return position_phrase(o.bbox, W, H).split()

    m = int(rng.integers(1, min(3, len(objs)) + 1))            # objects in the opening sentence
    units.append((_OPENINGS[rng.integers(len(_OPENINGS))].split(), None, False))
    for k, o in enumerate(objs[:m]):
        if k > 0:
            units.append((["and"] if k == m - 1 else [","], None, False))
        units.append((desc(o) + (pos(o) if rng.random() < 0.8 else []), o.id, k == m - 1))
    for o in objs[m:]:
        v = rng.random()
        if v < 0.45:
            p = pos(o)
            units.append(([p[0].capitalize()] + p[1:] + ["there", "is"] + desc(o), o.id, True))
        elif v < 0.75:
            units.append((["We", "can", "also", "see"], None, False))
            units.append((desc(o) + pos(o), o.id, True))
        else:
            units.append((["There", "is", "also"], None, False))
            units.append((desc(o) + pos(o), o.id, True))
    if rng.random() < 0.7:
        bg = scene.background.split()
        v = rng.random()
        if v < 0.4:
            units.append((["In", "the", "background", "we", "can", "see", _a(bg[0])] + bg + ["surface"],
                          "background", True))
        elif v < 0.8:
            units.append((["The", "background", "is"] + bg, "background", True))
        else:                                                    # the pointer sweeps the top band only
            units.append((["At", "the", "top", "we", "can", "see", _a(bg[0])] + bg + ["surface"], "top", True))
    # Attach "," to the previous word and "." to sentence ends, as in a transcription.
    out: list[tuple[list[str], Any, bool]] = []
    for words, target, end in units:
        if words == [","]:
            prev = out[-1][0]
            prev[-1] += ","
            continue
        words = list(words)
        if end:
            words[-1] += "."
        out.append((words, target, end))
    return out


def _dwell_positions(d: dict, t: np.ndarray) -> np.ndarray:
    """Pointer (x, y) normalised at times ``t`` (K) while dwelling on ``d``: a slow orbit around an
    object's visible centroid, or a wide Lissajous sweep over the background (or the top band). K×2."""
    u = t - d["s"]
    if d["kind"] == "object":
        ang = d["omega"] * u + d["phase"]
        return np.stack([d["ax"] + d["rx"] * np.cos(ang), d["ay"] + d["ry"] * np.sin(ang)], -1)
    if d["kind"] == "top":
        return np.stack([0.5 + 0.35 * np.sin(d["w1"] * u + d["p1"]), 0.14 + 0.07 * np.sin(d["w2"] * u + d["p2"])], -1)
    return np.stack([0.5 + 0.32 * np.sin(d["w1"] * u + d["p1"]), 0.5 + 0.30 * np.sin(d["w2"] * u + d["p2"])], -1)


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3 - 2 * u)


def narrative_for_scene(scene: Scene, rng: np.random.Generator, masks: np.ndarray | None = None,
                        oddity_rate: float = DEFAULT_ODDITY_RATE) -> tuple[dict, list[Any], dict]:
    """A Localized Narratives record for ``scene`` plus its ground truth.

    Returns ``(record, targets, info)``: ``record`` in the official schema (``image_id`` a string,
    times in seconds, trace x/y normalised to the image and possibly outside [0, 1]); ``targets[k]``
    = what the pointer is on during utterance k (object id, "background", "top", or None while moving);
    ``info`` = counts (excursions, oddities) for the statistics.

    The pointer hovers over an object while that object's words (including its position phrase) are
    spoken, moves smoothly during connectives and pauses, sometimes overshoots out of the image
    (an excursion; beyond :data:`TRACE_BAND` the segment is split) and often leaves the image after
    the last word. ``masks`` (N×H×W visible masks) give the hover anchor = visible centroid; without
    them the visible-box centre is used.
    """
    W, H = scene.width, scene.height
    units = _narrative_units(scene, rng)
    # --- utterances of 1-3 words with speaking times ---
    utts: list[tuple[str, float, float, Any]] = []
    cursor = float(rng.uniform(0.4, 2.0))
    for words, target, end in units:
        i = 0
        while i < len(words):
            k = int(rng.choice((1, 2, 3), p=(0.3, 0.45, 0.25)))
            chunk = words[i:i + k]
            i += k
            dur = sum(rng.uniform(0.22, 0.36) + 0.02 * len(w) for w in chunk)
            utts.append((" ".join(chunk), cursor, cursor + dur, target))
            cursor += dur + rng.uniform(0.0, 0.12)
            if rng.random() < 0.04:
                cursor += rng.uniform(0.5, 1.3)                 # hesitation
        if end:
            cursor += rng.uniform(0.25, 0.8)                     # sentence pause
    # --- dwell intervals: consecutive utterances on the same target ---
    anchors = {}
    for idx, o in enumerate(scene.objects):
        if masks is not None and masks[idx].any():
            ys, xs = np.nonzero(masks[idx])
            anchors[o.id] = ((xs.mean() + 0.5) / W, (ys.mean() + 0.5) / H)
        else:
            anchors[o.id] = (o.center[0] / W, o.center[1] / H)
    size_of = {o.id: (o.bbox[2] / W, o.bbox[3] / H) for o in scene.objects}
    dwells: list[dict] = []
    for text, s, e, target in utts:
        if target is None:
            continue
        if dwells and dwells[-1]["target"] == target and s - dwells[-1]["e"] < 1.5:
            dwells[-1]["e"] = e
            continue
        if target in ("background", "top"):
            d = {"kind": target, "w1": rng.uniform(1.6, 2.6), "w2": rng.uniform(1.0, 1.8),
                 "p1": rng.uniform(0, 2 * math.pi), "p2": rng.uniform(0, 2 * math.pi)}
        else:
            bw, bh = size_of[target]
            d = {"kind": "object", "ax": anchors[target][0], "ay": anchors[target][1],
                 "rx": 0.22 * bw, "ry": 0.22 * bh, "omega": rng.uniform(2.0, 5.0) * rng.choice((-1, 1)),
                 "phase": rng.uniform(0, 2 * math.pi), "jit": 0.05 * min(bw, bh)}
        d.update(target=target, s=s, e=e)
        dwells.append(d)
    # --- sample times and pointer path ---
    t_begin = max(0.0, utts[0][1] - rng.uniform(0.2, 0.8))
    t_end = utts[-1][2] + rng.uniform(0.1, 0.7)
    ts = t_begin + np.cumsum(rng.uniform(0.06, 0.1, size=int((t_end - t_begin) / 0.06) + 2))
    ts = np.concatenate([[t_begin], ts[ts <= t_end]])
    xy = np.empty((len(ts), 2))
    jit = np.full(len(ts), 0.003)
    info = {"excursions": 0, "exits": 0}
    start = np.array(rng.uniform(0.25, 0.75, size=2))
    moves = []                                                   # (t0, t1, p0, p1)
    prev_t, prev_p = t_begin, start
    for d in dwells:
        p_in = _dwell_positions(d, np.array([d["s"]]))[0]
        moves.append((prev_t, d["s"], prev_p, p_in))
        prev_t, prev_p = d["e"], _dwell_positions(d, np.array([d["e"]]))[0]
    exit_p = None
    if rng.random() < 0.45:                                      # leave the image after the last word
        side = rng.integers(4)
        far = rng.uniform(1.05, 1.4)
        exit_p = prev_p.copy()
        exit_p[side % 2] = far if side < 2 else 1 - far
        info["exits"] = 1
    moves.append((prev_t, t_end + 1e-6, prev_p, exit_p if exit_p is not None else prev_p))
    excursion = None
    if len(moves) > 2 and rng.random() < 0.2:                    # overshoot out of the image between objects
        excursion = int(rng.integers(1, len(moves) - 1))
        info["excursions"] = 1
    for i, (t0, t1, p0, p1) in enumerate(moves):
        sel = (ts >= t0) & (ts < t1) if i < len(moves) - 1 else ts >= t0
        if not sel.any():
            continue
        u = _smoothstep((ts[sel] - t0) / max(t1 - t0, 1e-6))[:, None]
        if i == excursion:
            side = rng.integers(4)
            e = (p0 + p1) / 2
            e[side % 2] = rng.uniform(1.03, 1.25) if side < 2 else -rng.uniform(0.03, 0.25)
            wpt = 2 * e - (p0 + p1) / 2                          # quadratic Bezier through e at u=1/2
            xy[sel] = (1 - u) ** 2 * p0 + 2 * u * (1 - u) * wpt + u ** 2 * p1
        else:
            xy[sel] = p0 + (p1 - p0) * u
    for d in dwells:
        sel = (ts >= d["s"]) & (ts <= d["e"])
        xy[sel] = _dwell_positions(d, ts[sel])
        if d["kind"] == "object":
            jit[sel] = d["jit"]
    xy = xy + rng.normal(size=xy.shape) * jit[:, None]
    # --- split into segments where the pointer leaves the recorded band ---
    inside = np.all((xy >= -TRACE_BAND) & (xy <= 1 + TRACE_BAND), axis=1)
    segments: list[list[dict]] = []
    cur: list[dict] = []
    for (x, y), t, ok in zip(xy.tolist(), ts.tolist(), inside.tolist()):
        if ok:
            cur.append({"x": round(x, 4), "y": round(y, 4), "t": round(t, 3)})
        elif cur:
            segments.append(cur)
            cur = []
    if cur:
        segments.append(cur)
    timed = [{"utterance": text, "start_time": round(s, 3), "end_time": round(e, 3)} for text, s, e, _ in utts]
    # --- real-world oddities at a small rate ---
    odd = {"zero_duration": 0, "integer_times": 0, "no_trace": 0}
    if rng.random() < oddity_rate:
        k = int(rng.integers(len(timed)))
        timed[k]["end_time"] = timed[k]["start_time"]
        odd["zero_duration"] = 1
    if rng.random() < oddity_rate:
        timed[0]["start_time"] = int(math.floor(timed[0]["start_time"]))
        timed[-1]["end_time"] = int(math.ceil(timed[-1]["end_time"]))
        odd["integer_times"] = 1
    if rng.random() < oddity_rate:
        segments = []
        odd["no_trace"] = 1
    info.update(odd)
    annotator = int(rng.integers(0, 64))
    ds = f"synthetic_{scene.split}"
    record = {
        "dataset_id": ds,
        "image_id": str(scene.image_id),
        "annotator_id": annotator,
        "caption": " ".join(u["utterance"] for u in timed),
        "timed_caption": timed,
        "traces": segments,
        "voice_recording": f"{ds}/{ds}_{scene.image_id}_{annotator}.ogg",
    }
    info["utterances"] = len(timed)
    info["split_segments"] = int(len(segments) > 1)
    info["points"] = sum(len(s) for s in segments)
    info["points_outside"] = sum(1 for s in segments for p in s if not (0 <= p["x"] <= 1 and 0 <= p["y"] <= 1))
    return record, [u[3] for u in utts], info


# =================================================================================================
# One image -> all its annotations (runs in the workers)
# =================================================================================================
def _rle_annotations(scene: Scene, masks: np.ndarray) -> list[dict]:
    """COCO instance annotations (RLE via pycocotools) of the visible masks."""
    from pycocotools import mask as mask_util

    if len(scene.objects) == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    areas, boxes = mask_util.area(rles), mask_util.toBbox(rles)
    anns = []
    for o, rle, a, b in zip(scene.objects, rles, areas, boxes):
        anns.append({"id": o.id, "image_id": scene.image_id, "category_id": V.category_id(o.shape),
                     "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                     "area": float(a), "bbox": [float(v) for v in b], "iscrowd": 0})
    return anns


def _annotate(scene: Scene, masks: np.ndarray, rng: np.random.Generator, oddity_rate: float) -> dict:
    """Every annotation of one image as plain data; ids that must be sequential are assigned later."""
    W, H = scene.width, scene.height
    record, _targets, ln_info = narrative_for_scene(scene, rng, masks, oddity_rate)
    # RefCOCO: test images go to testA or testB by the shape group with more objects (ties at random)
    # and only that group's objects become targets, like RefCOCO's people / non-people test splits.
    groups = [V.SHAPE_TO_GROUP[o.shape] for o in scene.objects]
    if scene.split == "test":
        na, nb = groups.count("simple"), groups.count("complex")
        g = "simple" if na > nb else "complex" if nb > na else ("simple", "complex")[rng.integers(2)]
        ref_split, ref_group = V.TEST_SPLIT_OF_GROUP[g], g
    else:
        ref_split, ref_group = scene.split, None
    refs = []
    landmarks = landmark_names(scene)
    for o, g in zip(scene.objects, groups):
        if ref_group is not None and g != ref_group:
            continue
        by_class = referring_expressions(scene, o.id, landmarks)
        available = [c for c in EXPRESSION_CLASSES if by_class[c]]
        if not available:
            continue
        chosen = [(c, by_class[c][rng.integers(len(by_class[c]))]) for c in available]
        if len(chosen) < 3:                                      # a second phrasing of some class
            pool = [(c, e) for c in available for e in by_class[c] if (c, e) not in chosen]
            if pool:
                chosen.append(pool[rng.integers(len(pool))])
        refs.append({"ann_id": o.id, "category_id": V.category_id(o.shape), "split": ref_split,
                     "sentences": [e for _, e in chosen], "classes": [c for c, _ in chosen],
                     "needed": available[0]})
    # Visual Genome regions: one phrase per object, a second (jittered box) for some objects.
    regions, vg_odd = [], {"trailing_space": 0, "negative_xy": 0}
    for o in scene.objects:
        phrases = region_phrases_for_object(scene, o, rng)
        picks = [phrases[rng.integers(len(phrases))]]
        if rng.random() < 0.3:
            picks.append(phrases[rng.integers(len(phrases))])
        for j, ph in enumerate(picks):
            x, y, w, h = (int(v) for v in o.bbox)
            if j > 0:                                            # a second annotator's looser box
                x, y = max(0, x + int(rng.integers(-1, 2))), max(0, y + int(rng.integers(-1, 2)))
                w, h = min(W - x, w + int(rng.integers(0, 3))), min(H - y, h + int(rng.integers(0, 3)))
            if rng.random() < oddity_rate:
                ph += " "
                vg_odd["trailing_space"] += 1
            regions.append({"image_id": scene.image_id, "phrase": ph, "x": x, "y": y, "width": w, "height": h})
    if regions and rng.random() < oddity_rate:                   # a box drawn partly outside the image
        r = min(regions, key=lambda r: min(r["x"], r["y"]))
        k = "x" if r["x"] <= r["y"] else "y"
        shift = r[k] + int(rng.integers(1, 4))
        r[k] -= shift
        r["width" if k == "x" else "height"] += shift
        vg_odd["negative_xy"] = 1
    return {"image_id": scene.image_id, "split": scene.split, "scene": scene.to_json(),
            "coco": _rle_annotations(scene, masks), "captions": captions_for_scene(scene, rng),
            "ln": json.dumps(record, separators=(", ", ": ")), "ln_info": ln_info,
            "refs": refs, "regions": regions, "vg_oddities": vg_odd}


def _generate_chunk(args: tuple) -> list[dict]:
    """Worker: sample, render, save JPEGs and annotate the scenes ``items`` = [(image_id, split)]."""
    from PIL import Image

    out_dir, items, image_size, seed, oddity_rate = args
    out = []
    for image_id, split in items:
        rng = np.random.default_rng([seed, image_id])
        scene = sample_scene(rng, image_size, image_id=image_id, split=split)
        image, masks = render_scene(scene)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=95, subsampling=0)
        (Path(out_dir) / "images" / scene.file_name).write_bytes(buf.getvalue())
        out.append(_annotate(scene, masks, rng, oddity_rate))
    return out


# =================================================================================================
# The whole world
# =================================================================================================
def _dump(path: Path, obj: Any, indent: int | None = None) -> None:
    from pixelllm.utils import atomic_write_bytes

    sep = (",", ":") if indent is None else (",", ": ")
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, separators=sep) + "\n").encode())


def assign_splits(n_scenes: int, seed: int, split_fractions: Sequence[float]) -> dict[int, str]:
    """image id (1..N) -> "train" | "val" | "test"; a seeded permutation cut at the fractions."""
    if len(split_fractions) != 3 or any(f < 0 for f in split_fractions) or abs(sum(split_fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {split_fractions}")
    perm = np.random.default_rng([seed, 2**31]).permutation(n_scenes) + 1
    n_train = int(round(split_fractions[0] * n_scenes))
    n_val = int(round(split_fractions[1] * n_scenes))
    split = {}
    for k, i in enumerate(perm.tolist()):
        split[i] = "train" if k < n_train else ("val" if k < n_train + n_val else "test")
    return split


def generate(out_dir: str | os.PathLike, n_scenes: int = 2000, image_size: int = 128, seed: int = 0,
             split_fractions: Sequence[float] = (0.8, 0.1, 0.1), workers: int | None = None,
             write_card: str | os.PathLike | None = None, oddity_rate: float = DEFAULT_ODDITY_RATE,
             progress: bool = True) -> dict:
    """Generate the synthetic world into ``out_dir`` (layout in the module docstring).

    Args:
        n_scenes: number of images; ids 1..n_scenes.
        image_size: side S of the square images, pixels.
        seed: everything is a function of (seed, image id) — same seed, byte-identical annotations.
        split_fractions: train/val/test fractions of the images.
        workers: processes (default: CPU count, at most 8); the result does not depend on it.
        write_card: if given, write the dataset card (markdown) there.
        oddity_rate: probability of each real-world oddity per record/image.
    Returns the statistics (also written to ``out_dir/stats.json``).
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if n_scenes < 1 or seed < 0 or image_size < 32:
        raise ValueError(f"need n_scenes >= 1, seed >= 0 and image_size >= 32, got n_scenes={n_scenes}, "
                         f"seed={seed}, image_size={image_size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    split_of = assign_splits(n_scenes, seed, split_fractions)
    workers = max(1, min(workers or min(os.cpu_count() or 1, 8), 8))
    chunk = max(8, min(250, n_scenes // (workers * 8) or 1))
    items = [(i, split_of[i]) for i in range(1, n_scenes + 1)]
    jobs = [(str(out), items[k:k + chunk], image_size, seed, oddity_rate) for k in range(0, n_scenes, chunk)]
    results: list[dict] = []
    bar = tqdm(total=n_scenes, desc="synthetic world", unit="scene", disable=not progress)
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            results.extend(_generate_chunk(job))
            bar.update(len(job[1]))
    else:
        import multiprocessing as mp

        # spawn: safe even when the caller (a notebook) has torch threads running.
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for res in pool.imap(_generate_chunk, jobs):
                results.extend(res)
                bar.update(len(res))
    bar.close()
    t_render = time.perf_counter() - t_start
    stats = _write_annotations(out, results, image_size)
    stats["config"] = {"n_scenes": n_scenes, "image_size": image_size, "seed": seed,
                       "split_fractions": list(split_fractions), "oddity_rate": oddity_rate}
    stats["timing"] = {"seconds": round(time.perf_counter() - t_start, 2),
                       "render_seconds": round(t_render, 2), "workers": workers}
    _dump(out / "stats.json", stats, indent=2)
    if write_card is not None:
        write_dataset_card(write_card, stats)
    return stats


def _write_annotations(out: Path, results: list[dict], image_size: int) -> dict:
    """Merge the per-image results (in image-id order) into every annotation file; return counts."""
    from pixelllm.utils import atomic_write_bytes

    results.sort(key=lambda r: r["image_id"])
    categories = [{"id": V.category_id(s), "name": s, "supercategory": V.SHAPE_TO_GROUP[s]} for s in V.SHAPES]
    info = {"description": "PixelLLM synthetic world", "version": "1.0", "year": 2024}

    def image_entry(r: dict) -> dict:
        s = r["scene"]
        return {"id": s["image_id"], "file_name": s["file_name"], "width": s["width"], "height": s["height"]}

    stats: dict[str, Any] = {"splits": {}, "files": {}}
    by_split = {sp: [r for r in results if r["split"] == sp] for sp in SPLITS}
    _dump(out / "scenes.json", {"images": [r["scene"] for r in results]})
    stats["files"]["scenes.json"] = {"images": len(results)}
    cap_id = 1
    ln_counts = {"records": 0, "utterances": 0, "trace_points": 0, "points_outside_unit_square": 0,
                 "records_with_split_segments": 0, "excursions": 0, "exits_after_last_word": 0,
                 "oddities": {"zero_duration": 0, "integer_times": 0, "no_trace": 0}}
    for sp, rs in by_split.items():
        stats["splits"][sp] = len(rs)
        images = [image_entry(r) for r in rs]
        caps = []
        for r in rs:
            for c in r["captions"]:
                caps.append({"id": cap_id, "image_id": r["image_id"], "caption": c})
                cap_id += 1
        _dump(out / "captions" / f"captions_{sp}.json", {"info": info, "licenses": [], "images": images,
                                                          "annotations": caps})
        stats["files"][f"captions/captions_{sp}.json"] = {"images": len(images), "captions": len(caps)}
        anns = [a for r in rs for a in r["coco"]]
        _dump(out / "coco" / f"instances_{sp}.json", {"info": info, "licenses": [], "images": images,
                                                       "annotations": anns, "categories": categories})
        stats["files"][f"coco/instances_{sp}.json"] = {"images": len(images), "annotations": len(anns)}
        lines = "".join(r["ln"] + "\n" for r in rs)
        ln_path = f"localized_narratives/synthetic_{sp}_localized_narratives.jsonl"
        atomic_write_bytes(out / ln_path, lines.encode())
        stats["files"][ln_path] = {"records": len(rs)}
        for r in rs:
            li = r["ln_info"]
            ln_counts["records"] += 1
            ln_counts["utterances"] += li["utterances"]
            ln_counts["trace_points"] += li["points"]
            ln_counts["points_outside_unit_square"] += li["points_outside"]
            ln_counts["records_with_split_segments"] += li["split_segments"]
            ln_counts["excursions"] += li["excursions"]
            ln_counts["exits_after_last_word"] += li["exits"]
            for k in ln_counts["oddities"]:
                ln_counts["oddities"][k] += li[k]
    stats["localized_narratives"] = ln_counts
    # RefCOCO (refer API): refs(unc).p + instances.json over all images.
    refs, ref_id, sent_id = [], 1, 1
    ref_stats = {"refs": {}, "sentences": {}, "expression_classes": {c: 0 for c in EXPRESSION_CLASSES},
                 "needed_class": {c: 0 for c in EXPRESSION_CLASSES}}
    for r in results:
        for ref in r["refs"]:
            sents = []
            for e in ref["sentences"]:
                sents.append({"tokens": e.split(), "raw": e, "sent": e, "sent_id": sent_id})
                sent_id += 1
            refs.append({"ref_id": ref_id, "ann_id": ref["ann_id"], "image_id": r["image_id"],
                         "split": ref["split"], "category_id": ref["category_id"],
                         "sent_ids": [s["sent_id"] for s in sents],
                         "file_name": f"synthetic_{r['image_id']:012d}_{ref['ann_id']}.jpg",
                         "sentences": sents})
            ref_id += 1
            ref_stats["refs"][ref["split"]] = ref_stats["refs"].get(ref["split"], 0) + 1
            ref_stats["sentences"][ref["split"]] = ref_stats["sentences"].get(ref["split"], 0) + len(sents)
            for c in ref["classes"]:
                ref_stats["expression_classes"][c] += 1
            ref_stats["needed_class"][ref["needed"]] += 1
    (out / "refcoco").mkdir(parents=True, exist_ok=True)
    # Round-trip through JSON first: pickle memoises shared string objects, and whether two equal
    # strings are one object depends on which process built them; this makes the bytes canonical.
    atomic_write_bytes(out / "refcoco" / "refs(unc).p", pickle.dumps(json.loads(json.dumps(refs)), protocol=2))
    _dump(out / "refcoco" / "instances.json", {"info": info, "licenses": [],
                                               "images": [image_entry(r) for r in results],
                                               "annotations": [a for r in results for a in r["coco"]],
                                               "categories": categories})
    stats["files"]["refcoco/refs(unc).p"] = {"refs": len(refs), "sentences": sent_id - 1}
    stats["files"]["refcoco/instances.json"] = {"images": len(results),
                                                "annotations": sum(len(r["coco"]) for r in results)}
    stats["refcoco"] = ref_stats
    # Visual Genome.
    region_id, vg, vg_odd = 1, [], {"trailing_space": 0, "negative_xy": 0}
    for r in results:
        regs = []
        for reg in r["regions"]:
            regs.append({"region_id": region_id, **reg})
            region_id += 1
        vg.append({"id": r["image_id"], "regions": regs})
        for k in vg_odd:
            vg_odd[k] += r["vg_oddities"][k]
    _dump(out / "vg" / "region_descriptions.json", vg)
    _dump(out / "vg" / "image_data.json", [
        {"image_id": r["image_id"], "width": r["scene"]["width"], "height": r["scene"]["height"],
         "coco_id": r["image_id"], "flickr_id": None,
         "url": f"https://synthetic.invalid/images/{r['image_id']:012d}.jpg"} for r in results])
    _dump(out / "vg" / "densecap_splits.json", {sp: [r["image_id"] for r in by_split[sp]] for sp in SPLITS})
    stats["files"]["vg/region_descriptions.json"] = {"images": len(vg), "regions": region_id - 1}
    stats["files"]["vg/image_data.json"] = {"images": len(results)}
    stats["files"]["vg/densecap_splits.json"] = {sp: len(by_split[sp]) for sp in SPLITS}
    stats["vg"] = {"regions": region_id - 1, "oddities": vg_odd}
    # Scene statistics.
    n_obj: dict[str, int] = {}
    shapes = {s: 0 for s in V.SHAPES}
    colors = {c: 0 for c in V.COLORS}
    sizes = {s: 0 for s in V.SIZES}
    for r in results:
        objs = r["scene"]["objects"]
        n_obj[str(len(objs))] = n_obj.get(str(len(objs)), 0) + 1
        for o in objs:
            shapes[o["shape"]] += 1
            colors[o["color"]] += 1
            sizes[o["size"]] += 1
    stats["objects_per_image"] = dict(sorted(n_obj.items()))
    stats["objects"] = {"total": sum(shapes.values()), "shapes": shapes, "colors": colors, "sizes": sizes}
    stats["image_size"] = image_size
    stats["images_bytes"] = sum(f.stat().st_size for f in (out / "images").glob("*.jpg"))
    return stats


def write_dataset_card(path: str | os.PathLike, stats: dict) -> None:
    """Write the markdown dataset card (what is generated, counts, vocabulary, statistics)."""
    from pixelllm.utils import atomic_write_bytes

    c = stats["config"]
    ln, rf, vg = stats["localized_narratives"], stats["refcoco"], stats["vg"]
    L = [
        "# The synthetic world (generated)",
        "",
        "Written by `pixelllm.data.synthetic.generate` — do not edit by hand; regenerate with",
        f"`python -m data_prep.make_synthetic --out runs/full/data --n-scenes {c['n_scenes']} "
        f"--image-size {c['image_size']} --seed {c['seed']} --card data_prep/README.md`.",
        "",
        f"{c['n_scenes']} scenes of {c['image_size']}×{c['image_size']} px, seed {c['seed']}: a textured "
        "background (low-frequency noise, optional faint stripes, pixel noise) with 1–6 flat-coloured "
        "shapes that may partly occlude each other (each keeps ≥ 60 % of its pixels; overlapping shapes "
        "never share a colour). Every annotation is written in the real dataset format "
        "(see `docs/ARCHITECTURE.md`, layout `<run>/data/`). Same seed → byte-identical annotation files, "
        "whatever the number of workers.",
        "",
        "## Files",
        "",
        "| file | format | counts |",
        "|---|---|---|",
    ]
    fmt = {"scenes.json": "ground-truth scene graph", "captions/": "COCO captions",
           "coco/": "COCO instances (RLE)", "localized_narratives/": "Localized Narratives JSONL",
           "refcoco/refs": "refer API pickle (list of dicts)", "refcoco/instances": "COCO instances (all images)",
           "vg/region": "Visual Genome regions", "vg/image": "Visual Genome image data",
           "vg/densecap": "DenseCap splits"}
    for f, cnt in stats["files"].items():
        kind = next((v for k, v in fmt.items() if f.startswith(k)), "")
        L.append(f"| `{f}` | {kind} | " + ", ".join(f"{k} {v}" for k, v in cnt.items()) + " |")
    L.append(f"| `images/*.jpg` | JPEG q95 (4:4:4) | {c['n_scenes']} files, {stats['images_bytes'] / 1e6:.1f} MB |")
    L += ["", "## Splits (by image)", "", "| split | images | RefCOCO refs | RefCOCO sentences |", "|---|---|---|---|"]
    for sp in SPLITS:
        L.append(f"| {sp} | {stats['splits'][sp]} | {rf['refs'].get(sp, 0) if sp != 'test' else '—'} | "
                 f"{rf['sentences'].get(sp, 0) if sp != 'test' else '—'} |")
    for sp in ("testA", "testB"):
        L.append(f"| ↳ {sp} | — | {rf['refs'].get(sp, 0)} | {rf['sentences'].get(sp, 0)} |")
    L += ["",
          "RefCOCO's testA (people) / testB (other objects) split is mirrored by shape groups: a test image "
          "goes to **testA** if it has more *simple* shapes (" + ", ".join(V.SHAPE_GROUPS["simple"]) + ") than "
          "*complex* ones (" + ", ".join(V.SHAPE_GROUPS["complex"]) + "), else **testB** (ties at random), and "
          "only objects of that group are targets. The group is the COCO `supercategory`. The refs' "
          "`file_name` mimics the real per-ref names; open images by `image_id` (`images/{image_id:012d}.jpg`).",
          "", "## Vocabulary (`pixelllm/data/vocab.py`)", "",
          f"- shapes ({len(V.SHAPES)}): " + ", ".join(V.SHAPES),
          f"- colours ({len(V.COLORS)}): " + ", ".join(f"{k} {v}" for k, v in V.COLORS.items()),
          f"- sizes ({len(V.SIZES)}, radius / image side): " + ", ".join(f"{k} {v}" for k, v in V.SIZES.items()),
          "- backgrounds: " + ", ".join(V.BACKGROUNDS),
          "- relations: " + ", ".join(V.RELATIONS),
          "- positions (image thirds of the visible-box centre): " + ", ".join(V.POSITION_PHRASES.values()),
          "", "## Objects", "",
          "| objects per image | " + " | ".join(stats["objects_per_image"]) + " |",
          "|---|" + "---|" * len(stats["objects_per_image"]),
          "| images | " + " | ".join(str(v) for v in stats["objects_per_image"].values()) + " |",
          "",
          f"{stats['objects']['total']} objects. Shapes: " + ", ".join(f"{k} {v}" for k, v in stats["objects"]["shapes"].items())
          + ". Colours: " + ", ".join(f"{k} {v}" for k, v in stats["objects"]["colors"].items())
          + ". Sizes: " + ", ".join(f"{k} {v}" for k, v in stats["objects"]["sizes"].items()) + ".",
          "", "## Referring expressions", "",
          "Grammar `the [size] [colour] shape [relation the [size] [colour] shape]`; every expression is "
          "checked with `resolve_expression` to pick out exactly one object.", "",
          "| class | example | sentences | refs whose easiest unique expression is this class |", "|---|---|---|---|",
          f"| attribute | the red circle | {rf['expression_classes']['attribute']} | {rf['needed_class']['attribute']} |",
          f"| disambiguating | the small red circle | {rf['expression_classes']['disambiguating']} | {rf['needed_class']['disambiguating']} |",
          f"| spatial | the circle left of the blue star | {rf['expression_classes']['spatial']} | {rf['needed_class']['spatial']} |",
          "", "## Localized Narratives", "",
          f"{ln['records']} records, {ln['utterances']} utterances (1–3 words), {ln['trace_points']} trace points "
          f"({ln['points_outside_unit_square']} outside [0, 1], inside the ±{TRACE_BAND} band). The pointer hovers "
          "over an object while its words and position phrase are spoken and sweeps the image during "
          f"background sentences. {ln['excursions']} excursions out of the image between objects, "
          f"{ln['exits_after_last_word']} exits after the last word, {ln['records_with_split_segments']} records "
          "with more than one trace segment.",
          "", "## Real-world oddities (rate " + f"{c['oddity_rate']})", "",
          "| oddity | count |", "|---|---|",
          f"| LN utterance with start_time == end_time | {ln['oddities']['zero_duration']} |",
          f"| LN record with integer times | {ln['oddities']['integer_times']} |",
          f"| LN record with no trace | {ln['oddities']['no_trace']} |",
          f"| VG phrase with a trailing space | {vg['oddities']['trailing_space']} |",
          f"| VG box with negative x or y | {vg['oddities']['negative_xy']} |",
          "", "## Generation", "",
          f"{stats['timing']['seconds']} s with {stats['timing']['workers']} worker(s) "
          f"({stats['timing']['render_seconds']} s sampling/rendering/annotating, the rest writing files).", ""]
    atomic_write_bytes(path, "\n".join(L).encode())
