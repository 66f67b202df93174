"""COCO captions and COCO instances (pycocotools).

Captions (``captions_train2017.json``): images {id, file_name, height, width}, annotations
{id, image_id, caption} → per-image records {image_id, file_name, width, height, captions: [str]}.

Instances (``instances_val2017.json``): annotations {id, image_id, category_id, bbox [x, y, w, h]
pixels, area, iscrowd, segmentation (polygons, uncompressed or compressed RLE)}; masks are decoded
with ``pycocotools.mask``.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from pixelllm.data.errors import DataFormatError, SkipCounter, check_type, keep_nonempty, read_coco_images, require


def load_coco(path: str | os.PathLike, skips: SkipCounter | None = None):
    """A ``pycocotools.coco.COCO`` index of a checked COCO instances file (no progress prints).

    Checked before pycocotools sees it (PAPER_NOTES.md §6, "COCO instances, and broken records";
    docs/BAD_INPUT.md): every image has a unique int ``id``, a relative ``file_name`` inside the image
    folder and positive ``width`` / ``height``; every annotation a unique int ``id``, an int ``image_id``
    of a listed image, a ``bbox`` of 4 finite numbers and a segmentation that
    :func:`pixelllm.data.segmentation.check_segmentation` accepts. Violations raise
    :class:`DataFormatError` naming the file and field (``annotations[i]`` with the annotation id).

    Counted skips (``skips``, reported at the end when the counter is ours), as the reference COCO
    loaders do: an annotation whose ``bbox`` has width or height ≤ 0 (torchvision's detection reference
    ``ConvertCocoPolysToMask`` and DETR keep only boxes with x1 > x0 and y1 > y0), and one whose polygons
    are all invalid (< 3 points or an odd number of coordinates; detectron2 ``load_coco_json``). Dropped
    annotations are not in the index; ``coco.dropped`` maps their id → reason, ``coco.skips`` holds the
    counts."""
    from pycocotools.coco import COCO

    from pixelllm.data.errors import check_coco_images, read_json
    from pixelllm.data.segmentation import check_segmentation

    own = skips is None
    skips = skips if skips is not None else SkipCounter(f"coco {Path(path).name}")
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(path, None, None, f"expected a COCO object with 'images' and 'annotations', got "
                                                f"{type(data).__name__}")
    imgs = check_coco_images(require(data, "images", list, path, None), path)
    kept, dropped, first = [], {}, {}
    for i, a in enumerate(require(data, "annotations", list, path, None)):
        pre = f"annotations[{i}]."
        aid = require(a, "id", int, path, None, pre)
        if aid in first:
            raise DataFormatError(path, None, f"{pre}id", f"duplicate annotation id {aid} (first at "
                                                          f"annotations[{first[aid]}])")
        first[aid] = i
        pre = f"annotations[{i}] (id {aid})."
        iid = require(a, "image_id", int, path, None, pre)
        if iid not in imgs:
            raise DataFormatError(path, None, f"{pre}image_id", f"image {iid} not in 'images'")
        bbox = require(a, "bbox", list, path, None, pre)
        if len(bbox) != 4:
            raise DataFormatError(path, None, f"{pre}bbox", f"expected [x, y, w, h], got {len(bbox)} numbers")
        for k, v in enumerate(bbox):
            check_type(v, (int, float), path, None, f"{pre}bbox[{k}]")
        im = imgs[iid]
        seg, notes = check_segmentation(a.get("segmentation"), im["height"], im["width"], path, f"{pre}segmentation")
        for note in notes:
            skips.add(f"dropped: {note}", detail=f"annotation {aid}")
        reason = None
        if bbox[2] <= 0 or bbox[3] <= 0:
            reason = "skipped: box with width or height <= 0"
        elif a.get("segmentation") and seg is None:
            reason = "skipped: annotation without a valid polygon"
        if reason:
            skips.add(reason, detail=f"annotation {aid}")
            dropped[aid] = reason
            continue
        if isinstance(seg, list):
            a = {**a, "segmentation": seg}
        kept.append(a)
    data = {**data, "annotations": kept}
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    coco.dropped, coco.skips = dropped, skips
    if own:
        skips.report()
    return coco


def load_coco_captions(path: str | os.PathLike, skips: SkipCounter | None = None) -> list[dict]:
    """Read a COCO captions file into per-image records, in ``images`` order.

    Returns ``[{"image_id": int, "file_name": str, "width": int | None, "height": int | None,
    "captions": [str, ...]}]``; captions are stripped, empty ones skipped (counted), images without
    any caption skipped (counted). A caption pointing at an unknown image, a duplicate image or annotation
    id, or a missing / mistyped field raises DataFormatError naming the file and field.
    """
    own = skips is None
    skips = skips if skips is not None else SkipCounter(f"coco captions {Path(path).name}")
    recs, anns = read_coco_images(path, sizes_optional=True)
    for r in recs.values():
        r["captions"] = []
    first: dict[int, int] = {}
    for i, a in enumerate(anns):
        pre = f"annotations[{i}]."
        aid = require(a, "id", int, path, None, pre, optional=True)
        if aid is not None and aid in first:
            raise DataFormatError(path, None, f"{pre}id", f"duplicate annotation id {aid} (first at "
                                                          f"annotations[{first[aid]}])")
        first.setdefault(aid, i)
        iid = require(a, "image_id", int, path, None, pre)
        cap = require(a, "caption", str, path, None, pre).strip()
        if iid not in recs:
            raise DataFormatError(path, None, f"{pre}image_id", f"image {iid} not in 'images'")
        if not cap:
            skips.add("skipped: empty caption", detail=f"annotation {a.get('id')}")
            continue
        recs[iid]["captions"].append(cap)
    out = keep_nonempty(recs.values(), "captions", skips, "skipped: image without captions")
    if own:
        skips.report()
    return out


def decode_segmentation(segmentation: Any, height: int, width: int, path: str | os.PathLike | None = None,
                        field: str = "segmentation") -> np.ndarray:
    """A COCO segmentation → H×W uint8 mask (1 inside), original image pixels.

    Accepts polygons ``[[x0, y0, x1, y1, ...], ...]``, uncompressed RLE ``{"size": [h, w], "counts":
    [ints]}`` and compressed RLE (``counts`` str or bytes), decoded by ``pycocotools.mask`` after
    :func:`pixelllm.data.segmentation.check_segmentation`; bad input raises :class:`DataFormatError`
    naming ``path`` and ``field`` (e.g. ``"annotations[3] (id 17).segmentation"``)."""
    from pixelllm.data.segmentation import decode_checked

    return decode_checked(segmentation, height, width, path, field)


class CocoInstances:
    """COCO instances through pycocotools, with per-image object lists and decoded masks.

    ``objects(image_id)`` → ``[{"id", "category_id", "category", "bbox": [x, y, w, h], "area",
    "iscrowd", "segmentation"}]`` (pixels of the original image); ``mask(ann_id)`` → H×W uint8.
    """

    def __init__(self, path: str | os.PathLike, skips: SkipCounter | None = None):
        self.path = Path(path)
        self.coco = load_coco(path, skips)
        self.categories = {c["id"]: c["name"] for c in self.coco.dataset.get("categories", [])}

    def image_ids(self) -> list[int]:
        return sorted(self.coco.imgs)

    def image_info(self, image_id: int) -> dict:
        return self.coco.imgs[image_id]

    def objects(self, image_id: int) -> list[dict]:
        out = []
        for a in self.coco.imgToAnns.get(image_id, []):
            out.append({"id": a["id"], "category_id": a["category_id"],
                        "category": self.categories.get(a["category_id"]), "bbox": [float(v) for v in a["bbox"]],
                        "area": a.get("area"), "iscrowd": a.get("iscrowd", 0), "segmentation": a.get("segmentation")})
        return out

    def mask(self, ann_id: int) -> np.ndarray:
        """H×W uint8 mask of one annotation (its image's size), through :func:`decode_segmentation`."""
        a = self.coco.anns[ann_id]
        im = self.coco.imgs[a["image_id"]]
        return decode_segmentation(a.get("segmentation"), im["height"], im["width"], self.path,
                                   f"annotation {ann_id}.segmentation")

    def __len__(self) -> int:
        return len(self.coco.imgs)
