"""RefCOCO / RefCOCO+ / RefCOCOg in the refer-API format, and MDETR's pickle-free JSON conversion.

Refer layout (``<root>/<dataset>/``)::

    refs(unc).p       pickle of a list of {ref_id, ann_id, image_id, split, category_id, sent_ids,
                      file_name, sentences: [{tokens, raw, sent, sent_id}]}
    instances.json    COCO-style: images {id, file_name, height, width}, annotations {id, image_id,
                      bbox [x, y, w, h] pixels, segmentation (polygons or RLE), category_id}

The pickle is read with a **restricted unpickler** that refuses every global (class or function)
lookup, so a malicious ``.p`` file cannot execute code: only the pickle opcodes for builtin containers
and scalars (list, dict, tuple, str, bytes, int, float, bool, None) can appear, which is all the refer
files contain. MDETR's conversion (``final_refcoco_train.json``: one image entry per expression with
``caption`` and ``original_img_id``; annotations with ``bbox``/``segmentation``) needs no pickle at all.

Every reader returns per-expression records::

    {"ref_id", "ann_id", "image_id", "file_name", "width", "height", "expression", "sent_id",
     "bbox": [x, y, w, h] (pixels, original image), "segmentation", "category_id", "split"}
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from pixelllm.data.coco import load_coco
from pixelllm.data.errors import DataFormatError, SkipCounter, check_file_name, check_type, read_json, require

SPLITS = ("train", "val", "test", "testA", "testB")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build only builtin containers and scalars.

    ``find_class`` is the single door through which a pickle reaches code (classes, ``os.system``,
    ``builtins.eval`` …, also via the copyreg extension registry); refusing it for every name makes
    loading safe. ``persistent_load`` already refuses by default.
    """

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"refusing to load global '{module}.{name}': refer pickles may contain only lists, dicts, "
            "strings and numbers")


def restricted_load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (Python 2 ``str`` decoded as UTF-8).

    Raises :class:`DataFormatError` naming the file for a refused global or a corrupt pickle.
    """
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="utf-8").load()
        except pickle.UnpicklingError as e:
            raise DataFormatError(path, None, None, f"unsafe or invalid pickle: {e}") from None
        except (EOFError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as e:
            raise DataFormatError(path, None, None, f"corrupt pickle: {type(e).__name__}: {e}") from None


def load_refs(path: str | os.PathLike) -> list[dict]:
    """Read a refer ``refs(<split_by>).p`` file safely and check its schema.

    Returns the list of ref dicts as stored (keys ``ref_id, ann_id, image_id, split, sentences, ...``).
    """
    refs = restricted_load(path)
    check_type(refs, list, path, None, "<root>")
    first_ref: dict[int, int] = {}
    first_sent: dict[Any, str] = {}
    for i, r in enumerate(refs):
        pre = f"[{i}]."
        if not isinstance(r, dict):
            raise DataFormatError(path, None, f"[{i}]", f"expected a dict, got {type(r).__name__}")
        for k in ("ref_id", "ann_id", "image_id"):
            require(r, k, int, path, None, pre)
        if r["ref_id"] in first_ref:
            raise DataFormatError(path, None, f"{pre}ref_id", f"duplicate ref id {r['ref_id']} (first at "
                                                              f"[{first_ref[r['ref_id']]}])")
        first_ref[r["ref_id"]] = i
        require(r, "split", str, path, None, pre)
        sents = require(r, "sentences", list, path, None, pre)
        for j, s in enumerate(sents):
            sp = f"[{i}].sentences[{j}]."
            if not isinstance(s, dict):
                raise DataFormatError(path, None, sp[:-1], "expected a dict")
            if "raw" not in s and "sent" not in s:
                raise DataFormatError(path, None, f"{sp}raw", "missing (and no 'sent')")
            for k in ("sent", "raw"):
                require(s, k, str, path, None, sp, optional=True)       # None is refused, never "None"
            sid = require(s, "sent_id", int, path, None, sp, optional=True)
            if sid is not None:
                if sid in first_sent:
                    raise DataFormatError(path, None, f"{sp}sent_id", f"duplicate sentence id {sid} (first at "
                                                                      f"{first_sent[sid]})")
                first_sent[sid] = sp[:-1]
    return refs


class RefCOCO:
    """Refer-API dataset joined with its COCO instances.

    Args:
        root: folder holding ``<dataset>/refs(<split_by>).p`` and ``<dataset>/instances.json``.
        dataset: "refcoco" | "refcoco+" | "refcocog" (any folder name).
        split_by: "unc" | "umd" | "google".
        sentence_field: "sent" (lower-cased, tokenised; what the released PixelLLM configs read,
            ``refexp_field='sent'``) or "raw" (the original text).

    Attributes:
        records: one dict per expression (see module docstring), in ref order.
        coco: the ``pycocotools.coco.COCO`` index of ``instances.json``.
    """

    def __init__(self, root: str | os.PathLike, dataset: str = "refcoco", split_by: str = "unc",
                 sentence_field: str = "sent"):
        d = Path(root) / dataset
        self.refs_path = d / f"refs({split_by}).p"
        self.instances_path = d / "instances.json"
        self.refs = load_refs(self.refs_path)
        self.skips = SkipCounter(f"refer {dataset}({split_by})")
        self.coco = load_coco(self.instances_path, self.skips)
        self.records: list[dict] = []
        for i, r in enumerate(self.refs):
            if r["ann_id"] in self.coco.dropped:                 # a degenerate box / polygon (load_coco)
                self.skips.add(f"skipped: ref of a dropped annotation ({self.coco.dropped[r['ann_id']]})",
                               n=len(r["sentences"]), detail=f"ref {r['ref_id']} annotation {r['ann_id']}")
                continue
            if r["ann_id"] not in self.coco.anns:
                raise DataFormatError(self.refs_path, None, f"[{i}].ann_id",
                                      f"annotation {r['ann_id']} not found in {self.instances_path}")
            if r["image_id"] not in self.coco.imgs:
                raise DataFormatError(self.refs_path, None, f"[{i}].image_id",
                                      f"image {r['image_id']} not found in {self.instances_path}")
            ann, img = self.coco.anns[r["ann_id"]], self.coco.imgs[r["image_id"]]
            if ann["image_id"] != r["image_id"]:
                # the box would be drawn on another image: refs and instances do not belong together
                raise DataFormatError(self.refs_path, None, f"[{i}].image_id",
                                      f"ref {r['ref_id']} is on image {r['image_id']} but its annotation "
                                      f"{r['ann_id']} is on image {ann['image_id']} in {self.instances_path}")
            for j, s in enumerate(r["sentences"]):
                text = s.get(sentence_field, s.get("raw", s.get("sent", ""))).strip()
                if not text:
                    self.skips.add("skipped: empty expression", detail=f"ref {r['ref_id']} sentence {j}")
                    continue
                self.records.append({
                    "ref_id": r["ref_id"], "ann_id": r["ann_id"], "image_id": r["image_id"],
                    "file_name": img["file_name"], "width": img["width"], "height": img["height"],
                    "expression": text, "sent_id": s.get("sent_id"),
                    "bbox": [float(v) for v in ann["bbox"]], "segmentation": ann.get("segmentation"),
                    "category_id": ann.get("category_id"), "split": r["split"],
                })
        self.skips.report()

    def expressions(self, split: str | None = None) -> list[dict]:
        """Per-expression records of one split ("train", "val", "testA", "testB", "test"), or all."""
        if split is None:
            return list(self.records)
        return [r for r in self.records if r["split"] == split]

    @property
    def splits(self) -> list[str]:
        return sorted({r["split"] for r in self.records})

    def __len__(self) -> int:
        return len(self.records)


def load_mdetr_refexp(path: str | os.PathLike, split: str | None = None) -> list[dict]:
    """Read an MDETR-style referring-expression JSON (e.g. ``final_refcoco_val.json``).

    ``images`` has one entry per expression ({id, file_name, height, width, caption, original_img_id,
    ...}); ``annotations`` hold its box ({image_id → that entry's id, bbox [x, y, w, h], segmentation?}).
    Returns per-expression records like :class:`RefCOCO` (``image_id`` = the COCO ``original_img_id``,
    ``split`` = the argument, else inferred from a ``_train/_val/_testA/_testB/_test`` file-name suffix).
    """
    path = Path(path)
    data = read_json(path)
    if split is None:
        stem = path.stem
        split = next((s for s in ("testA", "testB", "train", "val", "test") if stem.endswith("_" + s)), None)
    images = require(data, "images", list, path, None)
    anns = require(data, "annotations", list, path, None)
    by_expr: dict[int, dict] = {}
    first_ann: dict[int, int] = {}
    for i, a in enumerate(anns):
        pre = f"annotations[{i}]."
        aid = require(a, "id", int, path, None, pre, optional=True)
        if aid is not None and aid in first_ann:
            raise DataFormatError(path, None, f"{pre}id", f"duplicate annotation id {aid} (first at "
                                                          f"annotations[{first_ann[aid]}])")
        first_ann.setdefault(aid, i)
        eid = require(a, "image_id", int, path, None, pre)
        bbox = require(a, "bbox", list, path, None, pre)
        if len(bbox) != 4:
            raise DataFormatError(path, None, f"{pre}bbox", f"expected 4 numbers, got {len(bbox)}")
        for k, v in enumerate(bbox):
            check_type(v, (int, float), path, None, f"{pre}bbox[{k}]")
        by_expr.setdefault(eid, a)                                    # one box per expression
    out = []
    skips = SkipCounter(f"mdetr {path.name}")
    first_expr: dict[int, int] = {}
    for i, im in enumerate(images):
        pre = f"images[{i}]."
        eid = require(im, "id", int, path, None, pre)
        if eid in first_expr:
            raise DataFormatError(path, None, f"{pre}id", f"duplicate image (expression) id {eid} (first at "
                                                          f"images[{first_expr[eid]}])")
        first_expr[eid] = i
        caption = require(im, "caption", str, path, None, pre).strip()
        a = by_expr.get(eid)
        if a is None:
            skips.add("skipped: expression without annotation", detail=f"images[{i}] id {eid}")
            continue
        out.append({
            "ref_id": im.get("ref_id", eid), "ann_id": a.get("id"),
            "image_id": require(im, "original_img_id", int, path, None, pre),
            "file_name": check_file_name(require(im, "file_name", str, path, None, pre), path, None, f"{pre}file_name"),
            "width": require(im, "width", int, path, None, pre),
            "height": require(im, "height", int, path, None, pre),
            "expression": caption, "sent_id": im.get("sentence_id", eid),
            "bbox": [float(v) for v in a["bbox"]], "segmentation": a.get("segmentation"),
            "category_id": a.get("category_id"), "split": split,
        })
    skips.report()
    return out
