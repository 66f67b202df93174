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
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pixelllm.data.errors import DataFormatError, SkipCounter, keep_nonempty, read_coco_images, require


def load_coco(path: str | os.PathLike):
    """``pycocotools.coco.COCO(path)`` without its progress prints; malformed JSON names the file."""
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, None, f"malformed JSON ({e.msg})") from None


def load_coco_captions(path: str | os.PathLike, skips: SkipCounter | None = None) -> list[dict]:
    """Read a COCO captions file into per-image records, in ``images`` order.

    Returns ``[{"image_id": int, "file_name": str, "width": int | None, "height": int | None,
    "captions": [str, ...]}]``; captions are stripped, empty ones skipped (counted), images without
    any caption skipped (counted). A caption pointing at an unknown image raises DataFormatError.
    """
    own = skips is None
    skips = skips if skips is not None else SkipCounter(f"coco captions {Path(path).name}")
    recs, anns = read_coco_images(path, sizes_optional=True)
    for r in recs.values():
        r["captions"] = []
    for i, a in enumerate(anns):
        pre = f"annotations[{i}]."
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


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation → H×W uint8 mask (1 inside), original image pixels.

    Accepts polygons ``[[x0, y0, x1, y1, ...], ...]``, uncompressed RLE ``{"size": [h, w], "counts":
    [ints]}`` and compressed RLE (``counts`` str or bytes), all through ``pycocotools.mask``.
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):                                  # polygons → RLEs → one RLE
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)      # uncompressed RLE
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"unknown COCO segmentation format: {type(segmentation).__name__} {str(segmentation)[:60]}")
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


class CocoInstances:
    """COCO instances through pycocotools, with per-image object lists and decoded masks.

    ``objects(image_id)`` → ``[{"id", "category_id", "category", "bbox": [x, y, w, h], "area",
    "iscrowd", "segmentation"}]`` (pixels of the original image); ``mask(ann_id)`` → H×W uint8.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.coco = load_coco(path)
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
        """H×W uint8 mask of one annotation (``pycocotools`` ``annToMask``)."""
        return np.ascontiguousarray(self.coco.annToMask(self.coco.anns[ann_id]), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.coco.imgs)
