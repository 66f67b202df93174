"""The pointing sidecar of a Localized Narratives file and the object boxes it refers to.

Beside each LN file ``<name>.jsonl`` the synthetic world writes ``<name>.pointing.jsonl``: one JSON object
per narrative, in the LN file's order, saying which object the pointer dwells on during each utterance
(PAPER_NOTES.md §6). The LN file itself keeps the official schema, byte for byte::

    {"image_id": "17", "annotator_id": 5, "pointing": [null, null, 172, 172, 172, null, 171, ...]}

``pointing[k]`` is the COCO annotation id (``coco/instances_{split}.json``) of the object under the
pointer while utterance k (``timed_caption[k]``) is spoken, or ``null`` when it is on no object (moving
between objects, on the background). Real LN data has no such ground truth; it is what makes the
``pointing_accuracy`` metric (:mod:`pixelllm.eval.trace`) possible on the synthetic world.

:func:`load_object_boxes` joins the COCO instances (boxes) with ``scenes.json`` (each object's colour,
which COCO categories do not carry) for that metric.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pixelllm.data.errors import DataFormatError, check_type, read_json, read_json_lines, require

POINTING_SUFFIX = ".pointing.jsonl"

#: (image_id, annotator_id) → per-utterance annotation id or None
PointingTable = dict[tuple[str, int | None], list[int | None]]


def pointing_path(ln_path: str | os.PathLike) -> Path:
    """The sidecar of LN file ``ln_path``: ``x_localized_narratives.jsonl`` → ``x_localized_narratives.pointing.jsonl``."""
    p = Path(ln_path)
    if p.suffix != ".jsonl":
        raise ValueError(f"pointing_path: expected a .jsonl Localized Narratives file, got {p}")
    return p.with_name(p.stem + POINTING_SUFFIX)


def pointing_record(image_id: str | int, annotator_id: int | None, targets: Sequence[Any]) -> dict:
    """One sidecar line: ``targets[k]`` = what the pointer is on during utterance k — an int annotation id
    is kept, anything else (None, a region name such as "background") becomes ``None``."""
    ids = [int(t) if isinstance(t, int) and not isinstance(t, bool) else None for t in targets]
    return {"image_id": str(image_id), "annotator_id": annotator_id, "pointing": ids}


def dump_pointing(records: Sequence[dict]) -> bytes:
    """The sidecar file's bytes: one compact JSON object per line, in the given (LN file) order."""
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()


def parse_pointing(obj: Any, path: str | os.PathLike | None = None, line: int | None = None) -> dict:
    """Validate one decoded sidecar object: ``image_id`` string (an int is accepted and converted),
    ``annotator_id`` int or null, ``pointing`` a list of int or null. Raises :class:`DataFormatError`
    naming file, line and field (e.g. ``pointing[3]``)."""
    if not isinstance(obj, dict):
        raise DataFormatError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    image_id = require(obj, "image_id", (str, int), path, line)
    annotator = obj.get("annotator_id")
    if annotator is not None:
        check_type(annotator, int, path, line, "annotator_id")
    ids = require(obj, "pointing", list, path, line)
    for k, a in enumerate(ids):
        if a is not None:
            check_type(a, int, path, line, f"pointing[{k}]")
    return {"image_id": str(image_id), "annotator_id": annotator, "pointing": list(ids)}


def load_pointing(path: str | os.PathLike, ln_path: str | os.PathLike | None = None) -> PointingTable:
    """Read a pointing sidecar → ``{(image_id, annotator_id): [annotation id or None per utterance]}``.

    With ``ln_path`` every sidecar line is checked against the LN line of the same number: same
    ``image_id`` / ``annotator_id`` and one entry per ``timed_caption`` utterance. Malformed JSON, a bad
    field, a duplicate narrative key or a mismatch raise :class:`DataFormatError` naming file, line, field.
    """
    out: PointingTable = {}
    records = []
    for lineno, obj in read_json_lines(path):
        rec = parse_pointing(obj, path, lineno)
        key = (rec["image_id"], rec["annotator_id"])
        if key in out:
            raise DataFormatError(path, lineno, "image_id", f"narrative {key} appears twice")
        out[key] = rec["pointing"]
        records.append((lineno, rec))
    if ln_path is not None:
        ln = [obj for _, obj in read_json_lines(ln_path)]
        if len(ln) != len(records):
            raise DataFormatError(path, None, None, f"{len(records)} records but {ln_path} has {len(ln)}")
        for (lineno, rec), obj in zip(records, ln):
            if (str(obj.get("image_id")), obj.get("annotator_id")) != (rec["image_id"], rec["annotator_id"]):
                raise DataFormatError(path, lineno, "image_id", f"narrative ({rec['image_id']!r}, "
                                      f"{rec['annotator_id']}) but {ln_path} has ({str(obj.get('image_id'))!r}, "
                                      f"{obj.get('annotator_id')}) on that line")
            n_utt = len(obj.get("timed_caption") or [])
            if len(rec["pointing"]) != n_utt:
                raise DataFormatError(path, lineno, "pointing", f"{len(rec['pointing'])} entries but the "
                                      f"narrative has {n_utt} utterances")
    return out


@dataclass
class ObjectBox:
    """One object of an image for the pointing metrics.

    ``box``: (x0, y0, x1, y1) of the visible part, normalised by the image width/height (COCO ``bbox``
    ``[x, y, w, h]`` → ``[x/W, y/H, (x+w)/W, (y+h)/H]``).
    """
    ann_id: int
    color: str
    shape: str
    box: tuple[float, float, float, float]


def load_object_boxes(instances_path: str | os.PathLike,
                      scenes_path: str | os.PathLike) -> dict[str, list[ObjectBox]]:
    """``{image_id: [ObjectBox, ...]}`` for the images of a COCO instances file: boxes and shapes
    (category names) from the instances, colours from ``scenes.json`` (matched by annotation id).

    An annotation whose image or colour is unknown raises :class:`DataFormatError` naming the file and
    the annotation."""
    inst = read_json(instances_path)
    scenes = read_json(scenes_path)
    colour = {int(o["id"]): o["color"] for s in scenes.get("images", []) for o in s.get("objects", [])}
    sizes = {int(im["id"]): (float(im["width"]), float(im["height"])) for im in inst.get("images", [])}
    cats = {int(c["id"]): c["name"] for c in inst.get("categories", [])}
    out: dict[str, list[ObjectBox]] = {str(i): [] for i in sizes}
    for k, a in enumerate(inst.get("annotations", [])):
        field = f"annotations[{k}]"
        iid, aid = int(a["image_id"]), int(a["id"])
        if iid not in sizes:
            raise DataFormatError(instances_path, None, f"{field}.image_id", f"image {iid} is not in 'images'")
        if aid not in colour:
            raise DataFormatError(scenes_path, None, "images[].objects[].id",
                                  f"annotation {aid} of {instances_path} has no object (colour) here")
        if int(a["category_id"]) not in cats:
            raise DataFormatError(instances_path, None, f"{field}.category_id", f"unknown category {a['category_id']}")
        w, h = sizes[iid]
        x, y, bw, bh = (float(v) for v in a["bbox"])
        out[str(iid)].append(ObjectBox(aid, colour[aid], cats[int(a["category_id"])],
                                       (x / w, y / h, (x + bw) / w, (y + bh) / h)))
    return out
