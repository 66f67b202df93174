"""COCO segmentations checked before ``pycocotools`` sees them, and decoded with its errors named.

``pycocotools.mask`` trusts its input: a polygon coordinate that is NaN, infinite or far outside the
image makes its C rasteriser crash the process or allocate without bound; compressed-RLE ``counts`` that
do not add up to h·w decode into a mask of uninitialised memory (a different mask each run); a
4-number "polygon" is read as a box. :func:`check_segmentation` refuses or drops all of these first
(PAPER_NOTES.md §6, "COCO instances, and broken records"; docs/BAD_INPUT.md):

* **error** (:class:`~pixelllm.data.errors.DataFormatError` naming file, annotation and field) — a
  coordinate that is not a finite number or lies more than :data:`MAX_OUTSIDE` image sides outside the
  image; an RLE whose ``size`` is not the image's (h, w); RLE counts that are negative, not integers, or
  do not sum to h·w; a compressed ``counts`` string with characters outside pycocotools' alphabet
  (``'0'``…``'o'``) or ending inside a number; any other type.
* **dropped and counted** — a polygon with an odd number of coordinates or fewer than 3 points, as
  detectron2's ``load_coco_json`` does ("filter out invalid polygons (< 3 points)"); an annotation left
  without any polygon has no valid segmentation (its loader drops it, counted, as detectron2 does).

Formats: polygons ``[[x0, y0, x1, y1, ...], ...]`` (pixels of the original image), uncompressed RLE
``{"size": [h, w], "counts": [ints]}`` (column-major runs, first run of zeros), compressed RLE
(``counts`` a string of pycocotools' LEB128-like code).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from pixelllm.data.errors import DataFormatError, type_name

#: polygon coordinates may lie at most this many image sides outside the image (rounding and annotation
#: tools put points a little outside; pycocotools clips them — a coordinate 1e9 away is corrupt input)
MAX_OUTSIDE = 1.0

_Where = tuple[Any, Any, str]          # (path, line, field) of the segmentation, for messages


def rle_string_counts(counts: bytes | str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools ``rleFrString``, checked).

    Each count is a little-endian base-32 number, 5 bits per character ``chr(48 + c)``; bit 0x20 of c
    means "more characters follow", bit 0x10 of the last one is the sign; from the 4th count on the
    value is stored as the difference to the count two before. Raises ``ValueError`` for a character
    outside ``'0'``…``'o'`` or a number cut off at the end of the string."""
    if isinstance(counts, str):
        bad = next((k for k, ch in enumerate(counts) if not ch.isascii()), None)
        if bad is not None:
            raise ValueError(f"character {counts[bad]!r} at position {bad} is not in pycocotools' RLE alphabet "
                             "('0'...'o')")
        counts = counts.encode("ascii")
    s = bytes(counts)
    out: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("the string ends inside a number")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {chr(s[p])!r} at position {p} is not in pycocotools' RLE alphabet "
                                 "('0'...'o')")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _check_runs(counts: list[int], height: int, width: int, where: _Where) -> None:
    path, line, field = where
    neg = next((k for k, c in enumerate(counts) if c < 0), None)
    if neg is not None:
        raise DataFormatError(path, line, f"{field}.counts", f"run {neg} is negative ({counts[neg]})")
    total = sum(counts)
    if total != height * width:
        raise DataFormatError(path, line, f"{field}.counts", f"runs sum to {total}, not h·w = {height}·{width} = "
                                                            f"{height * width}")


def _check_rle(seg: dict, height: int, width: int, where: _Where) -> dict:
    path, line, field = where
    size = seg.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(type(v) is int for v in size)):
        raise DataFormatError(path, line, f"{field}.size", f"expected [height, width] integers, got {size!r:.60}")
    if list(size) != [height, width]:
        raise DataFormatError(path, line, f"{field}.size", f"RLE size {list(size)} (h, w) differs from the image's "
                                                          f"{[height, width]}")
    counts = seg.get("counts")
    if isinstance(counts, list):
        bad = next((k for k, c in enumerate(counts) if type(c) is not int), None)
        if bad is not None:
            raise DataFormatError(path, line, f"{field}.counts[{bad}]", f"expected an integer, got {counts[bad]!r:.40}")
        _check_runs(counts, height, width, where)
        return {"size": [height, width], "counts": list(counts)}
    if isinstance(counts, (str, bytes)):
        try:
            runs = rle_string_counts(counts)
        except ValueError as e:
            raise DataFormatError(path, line, f"{field}.counts", f"invalid compressed RLE: {e}") from None
        _check_runs(runs, height, width, where)
        return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else bytes(counts)}
    raise DataFormatError(path, line, f"{field}.counts", f"expected a list of integers or a compressed RLE string, "
                                                        f"got {type_name(counts)}")


def _check_polygons(seg: list, height: int, width: int, where: _Where, notes: list[str]) -> list[list[float]]:
    path, line, field = where
    lo_x, hi_x = -MAX_OUTSIDE * width, (1 + MAX_OUTSIDE) * width
    lo_y, hi_y = -MAX_OUTSIDE * height, (1 + MAX_OUTSIDE) * height
    kept = []
    for j, poly in enumerate(seg):
        f = f"{field}[{j}]"
        if not isinstance(poly, (list, tuple)):
            raise DataFormatError(path, line, f, f"expected a polygon (a list of numbers), got {type_name(poly)}")
        if any(isinstance(v, (list, tuple)) for v in poly[:1]):
            raise DataFormatError(path, line, f, "expected a flat list [x0, y0, x1, y1, ...]")
        try:
            a = np.asarray(poly)                     # a string or None makes the dtype str / object
        except ValueError:                           # ragged nesting
            raise DataFormatError(path, line, f, "expected a flat list [x0, y0, x1, y1, ...]") from None
        if a.ndim != 1 or a.dtype.kind not in "iuf":
            k = next((k for k, v in enumerate(poly) if isinstance(v, bool) or not isinstance(v, (int, float))), None)
            if k is None:
                raise DataFormatError(path, line, f, "expected a flat list [x0, y0, x1, y1, ...]")
            raise DataFormatError(path, line, f"{f}[{k}]", f"expected a number, got {poly[k]!r:.40}")
        a = a.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(a))
        if len(bad):
            raise DataFormatError(path, line, f"{f}[{bad[0]}]", f"expected a finite number, got {float(a[bad[0]])!r}")
        is_x = np.arange(len(a)) % 2 == 0
        far = np.flatnonzero(np.where(is_x, (a < lo_x) | (a > hi_x), (a < lo_y) | (a > hi_y)))
        if len(far):
            k = int(far[0])
            raise DataFormatError(path, line, f"{f}[{k}]", f"coordinate {float(a[k])!r} lies far outside the {width}×{height} "
                                                           "image (more than one image side away)")
        if len(a) % 2 or len(a) < 6:
            notes.append("polygon with an odd number of coordinates" if len(a) % 2 else "polygon with < 3 points")
            continue
        kept.append(a.tolist())
    return kept


def check_segmentation(seg: Any, height: int, width: int, path: str | os.PathLike | None = None,
                       field: str = "segmentation", line: int | None = None) -> tuple[Any, list[str]]:
    """Check a COCO segmentation of an ``height``×``width`` image before pycocotools sees it.

    Returns ``(segmentation, notes)``: the segmentation safe to decode (polygons: the valid ones, as
    floats; RLE: ``size`` + ``counts``, compressed counts as bytes), or ``None`` when no polygon is valid
    or ``seg`` is empty / None; ``notes`` names each dropped polygon ("polygon with < 3 points", ...).
    Everything else wrong raises :class:`DataFormatError` naming ``path``, ``line`` and ``field`` (see
    the module docstring)."""
    where = (path, line, field)
    notes: list[str] = []
    if seg is None or (isinstance(seg, (list, dict)) and not seg):
        return None, notes
    if isinstance(seg, list):
        kept = _check_polygons(seg, height, width, where, notes)
        return (kept or None), notes
    if isinstance(seg, dict):
        if "counts" not in seg:
            raise DataFormatError(path, line, f"{field}.counts", "missing")
        return _check_rle(seg, height, width, where), notes
    raise DataFormatError(path, line, field, f"expected polygons or an RLE object, got {type_name(seg)}")


def decode_checked(seg: Any, height: int, width: int, path: str | os.PathLike | None = None,
                   field: str = "segmentation", line: int | None = None) -> np.ndarray:
    """A COCO segmentation → H×W uint8 mask (1 inside) through ``pycocotools.mask``, checked first with
    :func:`check_segmentation`; no valid polygon → an all-zero mask. An error pycocotools still raises is
    re-raised as :class:`DataFormatError` naming ``path`` and ``field``."""
    from pycocotools import mask as mask_utils

    clean, _ = check_segmentation(seg, height, width, path, field, line)
    if clean is None:
        return np.zeros((height, width), np.uint8)
    try:
        if isinstance(clean, list):                                  # polygons → RLEs → one RLE
            rle = mask_utils.merge(mask_utils.frPyObjects(clean, height, width))
        elif isinstance(clean["counts"], list):                      # uncompressed RLE
            rle = mask_utils.frPyObjects(clean, height, width)
        else:
            rle = clean
        return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)
    except (ValueError, TypeError, OverflowError, KeyError) as e:
        raise DataFormatError(path, line, field, f"pycocotools cannot decode it: {type(e).__name__}: {e}") from None
