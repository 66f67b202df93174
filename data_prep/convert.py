"""Convert a plain folder of your own annotated images into the dataset formats the repo's readers load.

    python -m data_prep.convert --src my_folder --out runs/full/own_data [--annotations my_folder/ann.jsonl]
        [--splits 0.8 0.1 0.1] [--seed 0] [--name own] [--overwrite]

Input: images (any size, any format PIL reads) and one JSON-lines file (the only ``*.jsonl`` of ``--src``
unless ``--annotations`` names it), one image per line::

    {"image": "photos/cat.png",                       # path relative to --src (required)
     "caption": "a cat sleeps on a red sofa",         # the narrative (required, non-empty)
     "trace": [[x, y, t], ...],                       # mouse trace: pixels of the image, seconds (optional)
     "regions": [{"box": [x0, y0, x1, y1], "phrase": "a red sofa"}],            # (optional)
     "expressions": [{"box": [x0, y0, x1, y1], "text": "the cat", "category": "cat"},
                     {"mask": "masks/cat.png", "text": "the sleeping cat"}],   # (optional)
     "split": "train"}                                # train | val | test (optional; else seeded)

Boxes are corners in pixels of the original image (x right, y down, origin top-left). A ``mask`` is a PNG
(non-zero = inside) of the image's size, or COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` in pixels.
Every record is checked; the first problem stops the conversion with ``file:line: field 'name': problem``
(:class:`pixelllm.data.errors.DataFormatError`) and nothing is written.

Output (the layout of the synthetic world, ``pixelllm.data.synthetic``; formats in PAPER_NOTES.md §6)::

    images/{image_id:012d}.jpg                          RGB JPEG q95, original size; ids 1..N in file order
    captions/captions_{split}.json                      COCO captions (the caption of each image)
    coco/instances_{split}.json                         COCO instances: one object per distinct expression
                                                        target, RLE mask (box → its rectangle), bbox xywh
    localized_narratives/{name}_{split}_localized_narratives.jsonl
                                                        official LN schema, for the records with a trace
    refcoco/refs(unc).p, refcoco/instances.json         refer API: one ref per object, its expressions
    vg/region_descriptions.json, vg/image_data.json, vg/densecap_splits.json   Visual Genome regions
    stats.json                                          counts, the split of each image, its source file

Utterance timing of a trace (PAPER_NOTES.md §11): Localized Narratives time every utterance from the
speech; a plain trace has only point times, so each caption word becomes one utterance, timed by
:func:`data_prep.trace_sim.word_spans` — the words tile the trace's time span [t_first, t_last] in
proportion to ``len(word) + 1`` characters (a constant speaking rate, a pause after each word). The
official trace → token alignment then spreads the caption's tokens over these utterances by relative
position (PAPER_NOTES.md §2.4).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data_prep.trace_sim import word_spans
from pixelllm.data.errors import DataFormatError, check_type, read_json_lines, require

SPLITS = ("train", "val", "test")
DEFAULT_CATEGORY = "object"


@dataclass
class Target:
    """One expression target (a COCO object): ``mask`` H×W uint8, ``bbox`` [x, y, w, h] pixels."""
    category: str
    mask: np.ndarray
    bbox: list[float]
    texts: list[str] = field(default_factory=list)


@dataclass
class Record:
    """One validated input line, in the original image's pixels."""
    line: int
    image: Path
    width: int
    height: int
    caption: str
    trace: np.ndarray | None                  # P×3 (x, y, t), time-sorted
    regions: list[tuple[list[float], str]]    # ([x0, y0, x1, y1], phrase)
    targets: list[Target]
    split: str | None


# ---------------------------------------------------------------------------------------------- checks
def _box(value: Any, path, line: int, fld: str, width: int, height: int) -> list[float]:
    """A checked ``[x0, y0, x1, y1]`` box: four finite numbers, x1 > x0, y1 > y0, overlapping the image."""
    check_type(value, list, path, line, fld)
    if len(value) != 4:
        raise DataFormatError(path, line, fld, f"expected 4 numbers [x0, y0, x1, y1], got {len(value)}")
    x0, y0, x1, y1 = (float(check_type(v, (int, float), path, line, f"{fld}[{k}]")) for k, v in enumerate(value))
    if not (x1 > x0 and y1 > y0):
        raise DataFormatError(path, line, fld, f"needs x1 > x0 and y1 > y0 (corners), got {value}")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise DataFormatError(path, line, fld, f"{value} lies outside the {width}×{height} image")
    return [max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))]


def _text(obj: dict, key: str, path, line: int, prefix: str = "") -> str:
    text = require(obj, key, str, path, line, prefix).strip()
    if not text:
        raise DataFormatError(path, line, prefix + key, "empty text")
    return " ".join(text.split())


def _mask(value: Any, src: Path, path, line: int, fld: str, width: int, height: int) -> np.ndarray:
    """An H×W uint8 mask from a PNG path (relative to ``src``) or COCO polygons; must not be empty."""
    from PIL import Image

    if isinstance(value, str):
        f = src / value
        if not f.is_file():
            raise DataFormatError(path, line, fld, f"mask file {f} does not exist")
        try:
            with Image.open(f) as im:
                m = np.asarray(im.convert("L")) > 0
        except OSError as e:
            raise DataFormatError(path, line, fld, f"cannot read mask {f}: {e}") from None
        if m.shape != (height, width):
            raise DataFormatError(path, line, fld, f"mask {f} is {m.shape[1]}×{m.shape[0]}, the image "
                                  f"{width}×{height}")
    elif isinstance(value, list):
        from pixelllm.data.coco import decode_segmentation

        for k, poly in enumerate(value):
            check_type(poly, list, path, line, f"{fld}[{k}]")
            if len(poly) < 6 or len(poly) % 2:
                raise DataFormatError(path, line, f"{fld}[{k}]", f"a polygon needs an even number >= 6 of "
                                      f"coordinates, got {len(poly)}")
            for j, v in enumerate(poly):
                check_type(v, (int, float), path, line, f"{fld}[{k}][{j}]")
        m = decode_segmentation([[float(v) for v in p] for p in value], height, width) > 0
    else:
        raise DataFormatError(path, line, fld, f"expected a PNG path or COCO polygons, got {type(value).__name__}")
    if not m.any():
        raise DataFormatError(path, line, fld, "the mask is empty")
    return m.astype(np.uint8)


def _box_mask(box: Sequence[float], width: int, height: int) -> np.ndarray:
    """The pixels whose centres lie in the box (at least the pixel under the box centre)."""
    x0, y0, x1, y1 = box
    cols = (np.arange(width) + 0.5)
    rows = (np.arange(height) + 0.5)
    m = ((rows[:, None] >= y0) & (rows[:, None] < y1) & (cols[None, :] >= x0) & (cols[None, :] < x1))
    if not m.any():
        m[min(int((y0 + y1) / 2), height - 1), min(int((x0 + x1) / 2), width - 1)] = True
    return m.astype(np.uint8)


def parse_record(obj: Any, src: Path, path, line: int) -> Record:
    """Validate one decoded line (module docstring) → :class:`Record`; a problem raises
    :class:`DataFormatError` naming ``path:line`` and the field (e.g. ``regions[1].box``)."""
    from PIL import Image

    if not isinstance(obj, dict):
        raise DataFormatError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"image", "caption", "trace", "regions", "expressions", "split"})
    if unknown:
        raise DataFormatError(path, line, unknown[0], "unknown field (expected image, caption, trace, regions, "
                              "expressions, split)")
    rel = require(obj, "image", str, path, line)
    image = src / rel
    if not image.is_file():
        raise DataFormatError(path, line, "image", f"{image} does not exist")
    try:
        with Image.open(image) as im:
            im.verify()
        with Image.open(image) as im:
            width, height = im.size
    except OSError as e:
        raise DataFormatError(path, line, "image", f"cannot read {image}: {e}") from None
    caption = _text(obj, "caption", path, line)
    trace = None
    if "trace" in obj:
        pts = check_type(obj["trace"], list, path, line, "trace")
        arr = np.empty((len(pts), 3))
        for k, p in enumerate(pts):
            check_type(p, list, path, line, f"trace[{k}]")
            if len(p) != 3:
                raise DataFormatError(path, line, f"trace[{k}]", f"expected [x, y, t], got {len(p)} numbers")
            arr[k] = [check_type(v, (int, float), path, line, f"trace[{k}][{j}]") for j, v in enumerate(p)]
        if len(arr) < 2 or arr[:, 2].max() <= arr[:, 2].min():
            raise DataFormatError(path, line, "trace", "needs at least 2 points spanning a positive time")
        trace = arr[np.argsort(arr[:, 2], kind="stable")]
    regions = []
    for k, r in enumerate(check_type(obj.get("regions", []), list, path, line, "regions")):
        pre = f"regions[{k}]."
        regions.append((_box(require(r, "box", list, path, line, pre), path, line, pre + "box", width, height),
                        _text(r, "phrase", path, line, pre)))
    targets: list[Target] = []
    for k, e in enumerate(check_type(obj.get("expressions", []), list, path, line, "expressions")):
        pre = f"expressions[{k}]."
        if not isinstance(e, dict):
            raise DataFormatError(path, line, f"expressions[{k}]", f"expected an object, got {type(e).__name__}")
        if ("box" in e) == ("mask" in e):
            raise DataFormatError(path, line, f"expressions[{k}]", "give exactly one of 'box' and 'mask'")
        text = _text(e, "text", path, line, pre)
        category = require(e, "category", str, path, line, pre, optional=True, default=DEFAULT_CATEGORY).strip()
        if "box" in e:
            m = _box_mask(_box(e["box"], path, line, pre + "box", width, height), width, height)
        else:
            m = _mask(e["mask"], src, path, line, pre + "mask", width, height)
        same = next((t for t in targets if t.category == category and np.array_equal(t.mask, m)), None)
        if same is None:                                     # several expressions of one object: one ref
            from pycocotools import mask as mask_utils

            bbox = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m))).tolist()
            same = Target(category, m, [float(v) for v in bbox])
            targets.append(same)
        same.texts.append(text)
    split = require(obj, "split", str, path, line, optional=True)
    if split is not None and split not in SPLITS:
        raise DataFormatError(path, line, "split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    return Record(line, image, width, height, caption, trace, regions, targets, split)


def read_records(annotations: str | os.PathLike, src: str | os.PathLike) -> list[Record]:
    """Every line of the JSON-lines ``annotations`` file, validated (:func:`parse_record`)."""
    recs = [parse_record(obj, Path(src), annotations, lineno) for lineno, obj in read_json_lines(annotations)]
    if not recs:
        raise DataFormatError(annotations, None, None, "no records")
    seen: dict[Path, int] = {}
    for r in recs:
        if r.image.resolve() in seen:
            raise DataFormatError(annotations, r.line, "image", f"{r.image} is already used on line "
                                  f"{seen[r.image.resolve()]}")
        seen[r.image.resolve()] = r.line
    return recs


def assign_splits(n: int, fractions: Sequence[float], seed: int, fixed: Sequence[str | None] = ()) -> list[str]:
    """The split of each of ``n`` records: ``fixed[i]`` when given, else a seeded permutation of the others
    cut at ``fractions`` (train, val, test; rounded, the remainder to test)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {list(fractions)}")
    fixed = list(fixed) + [None] * (n - len(fixed))
    free = [i for i in range(n) if fixed[i] is None]
    perm = np.random.default_rng(seed).permutation(len(free))
    n_train, n_val = int(round(fractions[0] * len(free))), int(round(fractions[1] * len(free)))
    out = list(fixed)
    for rank, j in enumerate(perm.tolist()):
        out[free[j]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


# ---------------------------------------------------------------------------------------------- writing
def narrative(rec: Record, image_id: int, dataset_id: str) -> dict:
    """The official LN record of ``rec`` (module docstring: one utterance per word, char-rate timing)."""
    words = rec.caption.split()
    t = rec.trace
    spans = word_spans(words, float(t[0, 2]), float(t[-1, 2]))
    return {"dataset_id": dataset_id, "image_id": str(image_id), "annotator_id": 0, "caption": rec.caption,
            "timed_caption": [{"utterance": w, "start_time": round(float(a), 4), "end_time": round(float(b), 4)}
                              for w, (a, b) in zip(words, spans)],
            "traces": [[{"x": round(float(x) / rec.width, 5), "y": round(float(y) / rec.height, 5),
                         "t": round(float(tt), 4)} for x, y, tt in t]]}


def _dump(path: Path, obj: Any) -> None:
    from pixelllm.utils import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, separators=(",", ":")) + "\n").encode())


def convert(src: str | os.PathLike, out: str | os.PathLike, annotations: str | os.PathLike | None = None,
            split_fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, name: str = "own",
            overwrite: bool = False) -> dict:
    """Convert ``src`` (module docstring) into ``out``; returns the statistics (also ``out/stats.json``).

    Refuses a non-empty ``out`` unless ``overwrite`` (then the files it writes are replaced; other files
    stay). Validates every record before writing anything.
    """
    from PIL import Image
    from pycocotools import mask as mask_utils

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src} is not a folder")
    if annotations is None:
        found = sorted(src.glob("*.jsonl"))
        if len(found) != 1:
            raise FileNotFoundError(f"--src {src} must hold exactly one *.jsonl annotation file (found "
                                    f"{len(found)}); name it with --annotations")
        annotations = found[0]
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} is not empty; pass --overwrite to replace its files")
    if not name.isidentifier():
        raise ValueError(f"--name must be a plain word (letters, digits, _), got {name!r}")
    recs = read_records(annotations, src)
    splits = assign_splits(len(recs), split_fractions, seed, [r.split for r in recs])
    (out / "images").mkdir(parents=True, exist_ok=True)
    categories = sorted({t.category for r in recs for t in r.targets} or {DEFAULT_CATEGORY})
    cat_id = {c: i + 1 for i, c in enumerate(categories)}
    info = {"description": f"{name}: converted by data_prep.convert from {annotations}", "version": "1.0"}
    images, caps, anns, ln = {s: [] for s in SPLITS}, {s: [] for s in SPLITS}, {s: [] for s in SPLITS}, {
        s: [] for s in SPLITS}
    refs, vg, vg_info, ann_id, ref_id, sent_id, region_id = [], [], [], 1, 1, 1, 1
    for image_id, (r, sp) in enumerate(zip(recs, splits), start=1):
        file_name = f"{image_id:012d}.jpg"
        buf = io.BytesIO()
        with Image.open(r.image) as im:
            im.convert("RGB").save(buf, format="JPEG", quality=95)
        (out / "images" / file_name).write_bytes(buf.getvalue())
        entry = {"id": image_id, "file_name": file_name, "width": r.width, "height": r.height}
        images[sp].append(entry)
        caps[sp].append({"id": image_id, "image_id": image_id, "caption": r.caption})
        if r.trace is not None:
            ln[sp].append(narrative(r, image_id, f"{name}_{sp}"))
        for t in r.targets:
            rle = mask_utils.encode(np.asfortranarray(t.mask))
            anns[sp].append({"id": ann_id, "image_id": image_id, "category_id": cat_id[t.category],
                             "bbox": t.bbox, "area": int(t.mask.sum()), "iscrowd": 0,
                             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
            sents = []
            for text in t.texts:
                sents.append({"tokens": text.lower().split(), "raw": text, "sent": text.lower(), "sent_id": sent_id})
                sent_id += 1
            refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": sp,
                         "category_id": cat_id[t.category], "sent_ids": [s["sent_id"] for s in sents],
                         "file_name": f"{name}_{image_id:012d}_{ann_id}.jpg", "sentences": sents})
            ann_id, ref_id = ann_id + 1, ref_id + 1
        regions = []
        for (x0, y0, x1, y1), phrase in r.regions:
            regions.append({"region_id": region_id, "image_id": image_id, "phrase": phrase,
                            "x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0})
            region_id += 1
        vg.append({"id": image_id, "regions": regions})
        vg_info.append({"image_id": image_id, "width": r.width, "height": r.height, "coco_id": image_id,
                        "flickr_id": None, "url": file_name})
    cats = [{"id": cat_id[c], "name": c, "supercategory": c} for c in categories]
    for sp in SPLITS:
        _dump(out / "captions" / f"captions_{sp}.json", {"info": info, "licenses": [], "images": images[sp],
                                                          "annotations": caps[sp]})
        _dump(out / "coco" / f"instances_{sp}.json", {"info": info, "licenses": [], "images": images[sp],
                                                       "annotations": anns[sp], "categories": cats})
        from pixelllm.utils import atomic_write_bytes

        atomic_write_bytes(out / "localized_narratives" / f"{name}_{sp}_localized_narratives.jsonl",
                           "".join(json.dumps(x) + "\n" for x in ln[sp]).encode())
    (out / "refcoco").mkdir(parents=True, exist_ok=True)
    (out / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    _dump(out / "refcoco" / "instances.json", {"info": info, "licenses": [],
                                               "images": [e for sp in SPLITS for e in images[sp]],
                                               "annotations": [a for sp in SPLITS for a in anns[sp]],
                                               "categories": cats})
    _dump(out / "vg" / "region_descriptions.json", vg)
    _dump(out / "vg" / "image_data.json", vg_info)
    _dump(out / "vg" / "densecap_splits.json", {sp: [e["id"] for e in images[sp]] for sp in SPLITS})
    stats = {"source": str(annotations), "name": name, "seed": seed, "split_fractions": list(split_fractions),
             "splits": {sp: len(images[sp]) for sp in SPLITS},
             "narratives": {sp: len(ln[sp]) for sp in SPLITS}, "objects": ann_id - 1,
             "expressions": sent_id - 1, "regions": region_id - 1, "categories": categories,
             "images": [{"image_id": i + 1, "split": sp, "source": str(r.image.relative_to(src)), "line": r.line}
                        for i, (r, sp) in enumerate(zip(recs, splits))]}
    _dump(out / "stats.json", stats)
    return stats


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="folder with the images and one *.jsonl annotation file")
    ap.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    ap.add_argument("--annotations", default=None, help="the JSON-lines file (default: the one *.jsonl in --src)")
    ap.add_argument("--splits", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"),
                    help="fractions of the images without a 'split' field")
    ap.add_argument("--seed", type=int, default=0, help="seeds the split assignment")
    ap.add_argument("--name", default="own", help="dataset name: LN files {name}_{split}_localized_narratives.jsonl")
    ap.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    args = ap.parse_args(argv)
    try:
        stats = convert(args.src, args.out, args.annotations, tuple(args.splits), args.seed, args.name,
                        args.overwrite)
    except (DataFormatError, FileExistsError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"data_prep.convert: {e}") from None
    print(json.dumps({k: stats[k] for k in ("splits", "narratives", "objects", "expressions", "regions")}))
    return stats


if __name__ == "__main__":
    main()
