"""Visual Genome region descriptions (dense captioning / location-conditioned captioning).

Raw VG files (PAPER_NOTES.md §6)::

    region_descriptions.json  [{"id": image_id, "regions": [{"region_id", "image_id", "phrase",
                                "x", "y", "width", "height"}]}]      # x, y top-left pixels, may be < 0
    image_data.json           [{"image_id", "width", "height", "coco_id", "flickr_id", "url"}]
    densecap_splits.json      {"train": [image ids], "val": [...], "test": [...]}

and the COCO-style conversion read by GRiT / PixelLLM: images {id, file_name, height, width},
annotations {id, image_id, bbox [x, y, w, h], caption}.

Both readers return per-image records::

    {"image_id", "file_name", "width", "height", "split",
     "regions": [{"region_id", "phrase", "bbox": [x, y, w, h]}]}   # pixels of the original image

Phrases are stripped; boxes partly outside the image are clipped to it (counted); boxes with zero or
negative width/height, or nothing left inside the image, are skipped (counted); the counts are
reported once at the end of loading.
"""
from __future__ import annotations

import os
from pathlib import Path
from pixelllm.data.errors import DataFormatError, SkipCounter, check_type, keep_nonempty, read_coco_images, read_json, require


def clip_box_xywh(x: float, y: float, w: float, h: float, width: float, height: float,
                  skips: SkipCounter, detail: str = "") -> list[float] | None:
    """Clip an (x, y, w, h) pixel box to the image [0, width] × [0, height].

    Returns the clipped box, or ``None`` (counted in ``skips``) when w or h ≤ 0 or nothing of the box
    lies inside the image. A box that had to be clipped is counted as "box clipped to the image".
    """
    if w <= 0 or h <= 0:
        skips.add("skipped: box with width or height <= 0", detail=detail)
        return None
    x0, y0 = max(float(x), 0.0), max(float(y), 0.0)
    x1, y1 = min(float(x + w), float(width)), min(float(y + h), float(height))
    if x1 <= x0 or y1 <= y0:
        skips.add("skipped: box outside the image", detail=detail)
        return None
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        skips.add("clipped: box partly outside the image", detail=detail)
    return [x0, y0, x1 - x0, y1 - y0]


def load_densecap_splits(path: str | os.PathLike) -> dict[int, str]:
    """``{"train": [ids], "val": [...], "test": [...]}`` → {image_id: split}."""
    data = read_json(path)
    check_type(data, dict, path, None, "<root>")
    out: dict[int, str] = {}
    for split, ids in data.items():
        check_type(ids, list, path, None, split)
        for k, i in enumerate(ids):
            out[check_type(i, int, path, None, f"{split}[{k}]")] = split
    return out


def load_visual_genome(region_descriptions: str | os.PathLike, image_data: str | os.PathLike,
                       splits: str | os.PathLike | None = None, split: str | None = None,
                       skips: SkipCounter | None = None) -> list[dict]:
    """Read raw VG files into per-image records (see module docstring).

    Args:
        region_descriptions, image_data: the two VG JSON files.
        splits: optional DenseCap splits file; gives each image its ``split`` (``None`` if not listed).
        split: keep only the images of this split (needs ``splits``).
        skips: caller-owned counter; when omitted the counts are reported at the end.

    ``file_name`` is the basename of ``url`` when image_data has one (VG: ``VG_100K/<id>.jpg``), else
    ``f"{image_id}.jpg"``.
    """
    own = skips is None
    skips = skips if skips is not None else SkipCounter(f"visual genome {Path(region_descriptions).name}")
    meta = {}
    info = read_json(image_data)
    check_type(info, list, image_data, None, "<root>")
    for i, im in enumerate(info):
        pre = f"[{i}]."
        key = "id" if isinstance(im, dict) and "image_id" not in im and "id" in im else "image_id"
        iid = require(im, key, int, image_data, None, pre)
        if iid in meta:
            raise DataFormatError(image_data, None, f"{pre}{key}", f"duplicate image id {iid}")
        url = require(im, "url", str, image_data, None, pre, optional=True)
        meta[iid] = {"width": require(im, "width", int, image_data, None, pre),
                     "height": require(im, "height", int, image_data, None, pre),
                     "file_name": os.path.basename(url) if url else f"{iid}.jpg"}
    split_of = load_densecap_splits(splits) if splits is not None else None
    if split is not None and split_of is None:
        raise ValueError("load_visual_genome(split=...) needs the densecap splits file (splits=...)")
    data = read_json(region_descriptions)
    check_type(data, list, region_descriptions, None, "<root>")
    out = []
    seen_images: dict[int, int] = {}
    seen_regions: dict[int, str] = {}
    for i, entry in enumerate(data):
        pre = f"[{i}]."
        regions = require(entry, "regions", list, region_descriptions, None, pre)
        iid = entry.get("id", entry.get("image_id"))
        if iid is None and regions:
            iid = regions[0].get("image_id")
        check_type(iid, int, region_descriptions, None, f"{pre}id")
        if iid in seen_images:
            raise DataFormatError(region_descriptions, None, f"{pre}id", f"duplicate image id {iid} (first at "
                                                                          f"[{seen_images[iid]}])")
        seen_images[iid] = i
        sp = split_of.get(iid) if split_of is not None else None
        if split is not None and sp != split:
            continue
        if iid not in meta:
            skips.add("skipped: image not in image_data.json", detail=f"image {iid}")
            continue
        m = meta[iid]
        kept = []
        for k, r in enumerate(regions):
            rp = f"{pre}regions[{k}]."
            rid = require(r, "region_id", int, region_descriptions, None, rp)
            if rid in seen_regions:
                raise DataFormatError(region_descriptions, None, f"{rp}region_id",
                                      f"duplicate region id {rid} (first at {seen_regions[rid]})")
            seen_regions[rid] = rp[:-1]
            own = require(r, "image_id", int, region_descriptions, None, rp, optional=True)
            if own is not None and own != iid:
                raise DataFormatError(region_descriptions, None, f"{rp}image_id",
                                      f"region {rid} says image {own} but is listed under image {iid}")
            phrase = require(r, "phrase", str, region_descriptions, None, rp).strip()
            x, y, w, h = (require(r, c, (int, float), region_descriptions, None, rp)
                          for c in ("x", "y", "width", "height"))
            if not phrase:
                skips.add("skipped: empty phrase", detail=f"region {rid}")
                continue
            box = clip_box_xywh(x, y, w, h, m["width"], m["height"], skips, detail=f"region {rid}")
            if box is not None:
                kept.append({"region_id": rid, "phrase": phrase, "bbox": box})
        if not kept:
            skips.add("skipped: image without usable regions", detail=f"image {iid}")
            continue
        out.append({"image_id": iid, "file_name": m["file_name"], "width": m["width"],
                    "height": m["height"], "split": sp, "regions": kept})
    if own:
        skips.report()
    return out


def load_vg_coco_style(path: str | os.PathLike, split: str | None = None,
                       skips: SkipCounter | None = None) -> list[dict]:
    """Read the COCO-style VG conversion (GRiT / PixelLLM ``train.json`` / ``test.json``).

    images {id, file_name, height, width}; annotations {id, image_id, bbox [x, y, w, h], caption}.
    Returns per-image records like :func:`load_visual_genome` (``split`` = the argument).
    """
    own = skips is None
    skips = skips if skips is not None else SkipCounter(f"visual genome (COCO-style) {Path(path).name}")
    recs, anns = read_coco_images(path)
    for r in recs.values():
        r["split"], r["regions"] = split, []
    first: dict[int, int] = {}
    for i, a in enumerate(anns):
        pre = f"annotations[{i}]."
        iid = require(a, "image_id", int, path, None, pre)
        aid = require(a, "id", int, path, None, pre)
        if aid in first:
            raise DataFormatError(path, None, f"{pre}id", f"duplicate annotation (region) id {aid} (first at "
                                                          f"annotations[{first[aid]}])")
        first[aid] = i
        caption = require(a, "caption", str, path, None, pre).strip()
        bbox = require(a, "bbox", list, path, None, pre)
        if len(bbox) != 4:
            raise DataFormatError(path, None, f"{pre}bbox", f"expected 4 numbers, got {len(bbox)}")
        x, y, w, h = (check_type(v, (int, float), path, None, f"{pre}bbox[{k}]") for k, v in enumerate(bbox))
        if iid not in recs:
            raise DataFormatError(path, None, f"{pre}image_id", f"image {iid} not in 'images'")
        if not caption:
            skips.add("skipped: empty phrase", detail=f"annotation {aid}")
            continue
        r = recs[iid]
        box = clip_box_xywh(x, y, w, h, r["width"], r["height"], skips, detail=f"annotation {aid}")
        if box is not None:
            r["regions"].append({"region_id": aid, "phrase": caption, "bbox": box})
    out = keep_nonempty(recs.values(), "regions", skips, "skipped: image without usable regions")
    if own:
        skips.report()
    return out
