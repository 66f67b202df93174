"""Inputs shared by every plot: arrays to numpy, images to RGB, per-word points and validity flags,
colours, and the display form of token lists.

Conventions (same as ``docs/ARCHITECTURE.md``):

* images: H×W×3 uint8, or float in [0, 1]; H×W grey and H×W×4 RGBA are accepted, as are torch
  tensors (3×H×W tensors are transposed). Axes show the image in its pixel frame: x to the right,
  y down, origin at the top-left corner of the top-left pixel (``extent = (0, W, H, 0)``).
* boxes: N×4 (x0, y0, x1, y1) in pixels of the shown image.
* per-word points: W×2 (x, y) or W×4 (two points = box corners x0, y0, x1, y1), pixels of the shown
  image, or [0, 1] (normalised by the image width / height) when ``normalized=True``.
  NaN rows (and rows with ``valid[i] = False``) are not drawn.
* colours: one per word from a qualitative colormap (``tab10``), cycling: :func:`word_colors`.
  Word ``i`` has the same colour in the caption, in the points and in the trace.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib import colors as mcolors


def to_numpy(x: Any) -> np.ndarray:
    """numpy view of ``x`` (torch tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_rgb(image: Any) -> np.ndarray:
    """Return ``image`` as H×W×3 uint8 (kept) or float32 in [0, 1] (kept), ready for ``imshow``.

    Accepts H×W×3, H×W×4 (alpha dropped), H×W (grey, repeated) and 3×H×W (torch layout, transposed).
    Raises ``ValueError`` for other shapes and for float images outside [0, 1] (e.g. 0..255 floats,
    or ImageNet-normalised tensors: un-normalise first).
    """
    a = to_numpy(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # 3×H×W -> H×W×3
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"image: expected H×W×3 (or H×W, H×W×4, 3×H×W), got shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"image: integer values must lie in 0..255, got {a.min()}..{a.max()}")
        return a.astype(np.uint8)
    a = a.astype(np.float32)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"image: float values must lie in [0, 1], got {lo:.3g}..{hi:.3g} "
            "(0..255 floats: pass uint8; normalised tensors: un-normalise first)"
        )
    return np.clip(a, 0.0, 1.0)


def as_masks(masks: Any) -> np.ndarray:
    """N bool masks as an N×H×W bool array (an H×W mask becomes N = 1); any other shape raises."""
    m = to_numpy(masks).astype(bool)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"masks: expected N×H×W bool, got shape {m.shape}")
    return m


def image_hw(image: Any) -> tuple[int, int]:
    """(H, W) of ``image`` (any layout :func:`as_rgb` accepts)."""
    a = as_rgb(image)
    return int(a.shape[0]), int(a.shape[1])


def as_points(points: Any, n: int | None, name: str = "points") -> np.ndarray:
    """``points`` as float64 W×2 or W×4; ``n`` = expected number of rows (None: any)."""
    p = to_numpy(points).astype(np.float64)
    if p.ndim == 1 and p.size in (2, 4) and n in (None, 1):
        p = p[None]
    if p.ndim != 2 or p.shape[1] not in (2, 4):
        raise ValueError(f"{name}: expected W×2 (x, y) or W×4 (x0, y0, x1, y1), got shape {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"{name}: {p.shape[0]} rows for {n} words; one row per word is required")
    return p


def scale_points(p: np.ndarray, normalized: bool, hw: tuple[int, int] | None, name: str) -> np.ndarray:
    """Normalised [0, 1] -> pixels of an H×W image (x by W, y by H); pixels are returned unchanged."""
    if not normalized:
        return p
    if hw is None:
        raise ValueError(f"{name}: normalized=True needs the image (or its size) to scale to pixels")
    h, w = hw
    scale = np.array([w, h] * (p.shape[-1] // 2), dtype=np.float64)
    return p * scale


def as_valid(valid: Any, n: int, p: np.ndarray | None = None) -> np.ndarray:
    """Bool W: ``valid`` (default all True) and, if ``p`` is given, rows without NaN."""
    v = np.ones(n, bool) if valid is None else to_numpy(valid).astype(bool).reshape(-1)
    if v.shape[0] != n:
        raise ValueError(f"valid: {v.shape[0]} flags for {n} words")
    if p is not None:
        v = v & np.isfinite(p).all(axis=1)
    return v


def word_colors(n: int, cmap: str = "tab10") -> np.ndarray:
    """``n``×4 RGBA colours, one per word, cycling through a qualitative colormap.

    Word ``i`` gets colour ``i % K`` of the colormap's K colours (``tab10``: K = 10), so the same
    index always has the same colour in the caption, the points and the trace.
    """
    cm = colormaps[cmap]
    base = np.asarray(getattr(cm, "colors", cm(np.linspace(0, 1, 10))), dtype=np.float64)
    base = np.asarray([mcolors.to_rgba(c) for c in base])
    return base[np.arange(n) % len(base)] if n > 0 else np.zeros((0, 4))


def resolve_colors(colors: Any, n: int) -> np.ndarray:
    """``n``×4 RGBA: :func:`word_colors` for None, one colour repeated for a string, else the first ``n``
    of a list of colours (``ValueError`` when it has fewer than ``n``)."""
    if colors is None:
        return word_colors(n)
    if isinstance(colors, str):
        return np.asarray([mcolors.to_rgba(colors)] * n)
    out = np.asarray([mcolors.to_rgba(c) for c in colors])
    if len(out) < n:
        raise ValueError(f"colors: {len(out)} colours for {n} items")
    return out[:n]


def clean_tokens(tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """Display form of a token list: ``[(text, space_before)]``, one entry per token (indices kept).

    SentencePiece tokens (T5: ``"▁a"``, ``"▁tri"``, ``"angle"``) start a new word with ``"▁"``; pieces
    without it are glued to the previous one. Lists without any ``"▁"`` are taken as plain words,
    separated by spaces.
    """
    sp = any(t.startswith("▁") for t in tokens)
    out = []
    for i, t in enumerate(tokens):
        if sp:
            space = t.startswith("▁") and i > 0
            out.append((t.lstrip("▁"), space))
        else:
            out.append((t, i > 0))
    return out


__all__ = [
    "to_numpy", "as_rgb", "image_hw", "as_points", "scale_points", "as_valid", "word_colors", "resolve_colors",
    "clean_tokens",
]
