"""Scenes: objects and scenes, shape masks, occlusion (visible masks), sampling and rendering.

Coordinates are pixels of the S×S image (x right, y down, origin top-left); a pixel (row i, column j)
covers [j, j+1)×[i, i+1) and shapes are sampled at pixel centres (j + 0.5, i + 0.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pixelllm.data import vocab as V
from pixelllm.data.synthetic.constants import MIN_VISIBLE_FRACTION, N_OBJECTS_P


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


def bbox_of(mask: np.ndarray) -> list[float]:
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
        o.bbox, o.area = bbox_of(m), int(m.sum())
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
