"""Multi-target segmentation questions in a MUSE-like JSON (PixelLM's benchmark format), their reader, a
torch Dataset and its collate (PAPER_NOTES.md §7.1).

File ``<data_root>/muse/synthetic_{split}_muse.json`` (written for the synthetic world by
:func:`pixelllm.data.synthetic.muse.write_muse`)::

    {"info": {"description", "version", "split", "seed", ...},
     "questions": [
       {"id": 7,                                   question id, unique in the file
        "image_id": 17, "file_name": "000000000017.jpg", "height": 128, "width": 128,
        "question": "segment every red shape",
        "answer": "the red circle, the red star and the red square",
        "text_answer": "the red circle {seg}, the red star {seg} and the red square {seg}",
        "template": "colour",                      how the question was made (free text for other sources)
        "answers": [                               the targets, in the order the answer names them
          {"id": 170, "category_id": 1, "category_name": "circle",
           "rephrased_name": "the red circle",     the target's phrase in ``answer``
           "phrase_span": [0, 14],                 answer[0:14] == rephrased_name (characters)
           "bbox": [x, y, w, h], "area": 412,      pixels of the original image
           "segmentation": {"size": [128, 128], "counts": "..."}}, ...]}, ...]}

The field names of a question's targets (``answers``, ``category_name``, ``rephrased_name``,
``segmentation``, ``bbox``) and the ``{seg}`` placeholder of ``text_answer`` (one per target, where the
model's segmentation tokens go) are those of PixelLM's ``muse_{split}.json`` and its dataset code
(``utils/multi_reason_seg_dataset.py``). Unlike the official per-image records, a record here is one
question, so each has an id and the evaluator can report per question.

Bad input (module :mod:`pixelllm.data.errors`): a wrong type or value, a duplicate question id, an RLE
whose run lengths do not add up to height × width (checked **before** pycocotools, whose decoder writes
out of bounds on such input), a phrase span that does not hold the phrase, or a missing image file raise
:class:`~pixelllm.data.errors.DataFormatError` / ``FileNotFoundError`` naming the file, the record (index
and id) and the field. Questions with more targets than ``max_targets`` are skipped, counted and
reported.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pixelllm.data.datasets import DecodedImages, ResizePad, xywh_to_xyxy
from pixelllm.data.errors import DataFormatError, SkipCounter, check_type, read_json, require

#: placeholder of ``text_answer`` after each target's phrase (PixelLM's ``text_answers``)
SEG_PLACEHOLDER = "{seg}"
MUSE_VERSION = "1.0"


def muse_path(data_root: str | os.PathLike, split: str) -> Path:
    """``<data_root>/muse/synthetic_{split}_muse.json``."""
    return Path(data_root) / "muse" / f"synthetic_{split}_muse.json"


# ------------------------------------------------------------------------------------ segmentation
def rle_string_counts(counts: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, in Python): 5 bits per
    character offset by 48, bit 0x20 = more characters follow, sign-extended; from the 3rd run on each
    value is a difference to the run two before. Raises ValueError on a character outside '0'..'o' or a
    truncated value."""
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated run length at the end of the string")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[p]!r} at {p} is not an RLE character ('0'..'o')")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def check_segmentation(seg: Any, height: int, width: int, path, field: str) -> Any:
    """``seg`` if it is a valid COCO segmentation of an ``height`` × ``width`` image, else
    :class:`DataFormatError` naming ``field``: an RLE (``counts`` a compressed string or a list of
    non-negative ints) whose ``size`` is [height, width] and whose runs add up to height·width, or
    polygons (lists of ≥ 6 numbers, even length)."""
    if isinstance(seg, dict):
        size = require(seg, "size", list, path, None, field + ".")
        if [type(v) for v in size] != [int, int] or size != [height, width]:
            raise DataFormatError(path, None, f"{field}.size",
                                  f"expected [height, width] = [{height}, {width}], got {size!r}")
        counts = require(seg, "counts", (str, list), path, None, field + ".")
        if isinstance(counts, str):
            try:
                runs = rle_string_counts(counts)
            except ValueError as e:
                raise DataFormatError(path, None, f"{field}.counts", f"not a compressed RLE: {e}") from None
        else:
            runs = counts
            for k, v in enumerate(runs):
                check_type(v, int, path, None, f"{field}.counts[{k}]")
        if any(v < 0 for v in runs) or sum(runs) != height * width:
            raise DataFormatError(path, None, f"{field}.counts",
                                  f"run lengths must be >= 0 and add up to {height}×{width} = {height * width}, "
                                  f"got sum {sum(runs)} (min {min(runs, default=0)})")
        return seg
    if isinstance(seg, list) and seg:
        for k, poly in enumerate(seg):
            check_type(poly, list, path, None, f"{field}[{k}]")
            if len(poly) < 6 or len(poly) % 2:
                raise DataFormatError(path, None, f"{field}[{k}]",
                                      f"a polygon needs an even number >= 6 of coordinates, got {len(poly)}")
            for j, v in enumerate(poly):
                check_type(v, (int, float), path, None, f"{field}[{k}][{j}]")
        return seg
    raise DataFormatError(path, None, field, f"expected an RLE object or a non-empty list of polygons, "
                                             f"got {type(seg).__name__}")


# ------------------------------------------------------------------------------------------- reader
def _check_target(t: Any, rec: dict, path, pre: str) -> dict:
    """One entry of a question's ``answers`` (module docstring), validated; returns a normalised copy."""
    if not isinstance(t, dict):
        raise DataFormatError(path, None, pre.rstrip("."), f"expected an object, got {type(t).__name__}")
    out = {"id": require(t, "id", int, path, None, pre),
           "category_id": require(t, "category_id", int, path, None, pre),
           "category_name": require(t, "category_name", str, path, None, pre),
           "rephrased_name": require(t, "rephrased_name", str, path, None, pre)}
    span = require(t, "phrase_span", list, path, None, pre)
    ans = rec["answer"]
    if (len(span) != 2 or any(type(v) is not int for v in span) or not 0 <= span[0] < span[1] <= len(ans)
            or ans[span[0]:span[1]] != out["rephrased_name"]):
        raise DataFormatError(path, None, pre + "phrase_span",
                              f"{span!r} must be [start, end) characters of answer {ans!r} holding "
                              f"rephrased_name {out['rephrased_name']!r}")
    out["phrase_span"] = [int(span[0]), int(span[1])]
    bbox = require(t, "bbox", list, path, None, pre)
    if len(bbox) != 4:
        raise DataFormatError(path, None, pre + "bbox", f"expected 4 numbers [x, y, w, h], got {len(bbox)}")
    for k, v in enumerate(bbox):
        check_type(v, (int, float), path, None, f"{pre}bbox[{k}]")
    if bbox[2] < 0 or bbox[3] < 0:
        raise DataFormatError(path, None, pre + "bbox", f"negative width or height in {bbox!r}")
    out["bbox"] = [float(v) for v in bbox]
    out["area"] = require(t, "area", (int, float), path, None, pre, optional=True)
    out["segmentation"] = check_segmentation(require(t, "segmentation", (dict, list), path, None, pre),
                                             rec["height"], rec["width"], path, pre + "segmentation")
    return out


def load_muse(path: str | os.PathLike) -> list[dict]:
    """Read and validate a MUSE-like file (module docstring); returns one dict per question, in file order:
    ``{"id", "image_id", "file_name", "height", "width", "question", "answer", "text_answer", "template",
    "answers": [{"id", "category_id", "category_name", "rephrased_name", "phrase_span", "bbox", "area",
    "segmentation"}]}``. Raises :class:`DataFormatError` naming the file, ``questions[i]`` (+ its id) and
    the field."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(path, None, "questions", f"expected a top-level object {{info, questions}}, "
                                                       f"got {type(data).__name__}")
    if "info" in data:
        check_type(data["info"], dict, path, None, "info")
    questions = require(data, "questions", list, path, None)
    out: list[dict] = []
    seen: dict[int, int] = {}
    for i, q in enumerate(questions):
        pre = f"questions[{i}]."
        if not isinstance(q, dict):
            raise DataFormatError(path, None, f"questions[{i}]", f"expected an object, got {type(q).__name__}")
        qid = require(q, "id", int, path, None, pre)
        if qid in seen:
            raise DataFormatError(path, None, pre + "id", f"duplicate question id {qid} (also questions[{seen[qid]}])")
        seen[qid] = i
        pre = f"questions[{i}] (id {qid})."
        rec: dict[str, Any] = {"id": qid, "image_id": require(q, "image_id", int, path, None, pre),
                               "file_name": require(q, "file_name", str, path, None, pre)}
        for k in ("height", "width"):
            v = require(q, k, int, path, None, pre)
            if v < 1:
                raise DataFormatError(path, None, pre + k, f"expected a positive image size, got {v}")
            rec[k] = v
        for k in ("question", "answer"):
            rec[k] = require(q, k, str, path, None, pre)
            if not rec[k].strip():
                raise DataFormatError(path, None, pre + k, "empty")
        rec["template"] = require(q, "template", str, path, None, pre, optional=True, default="")
        targets = require(q, "answers", list, path, None, pre)
        if not targets:
            raise DataFormatError(path, None, pre + "answers", "a question needs at least one target")
        rec["answers"] = [_check_target(t, rec, path, f"{pre}answers[{k}].") for k, t in enumerate(targets)]
        ids = [t["id"] for t in rec["answers"]]
        if len(set(ids)) != len(ids):
            raise DataFormatError(path, None, pre + "answers", f"a target is listed twice (ids {ids})")
        ta = require(q, "text_answer", str, path, None, pre, optional=True)
        if ta is not None and ta.count(SEG_PLACEHOLDER) != len(targets):
            raise DataFormatError(path, None, pre + "text_answer",
                                  f"{ta.count(SEG_PLACEHOLDER)} {SEG_PLACEHOLDER} placeholders for {len(targets)} targets")
        rec["text_answer"] = ta if ta is not None else text_answer_of(rec["answer"], [t["phrase_span"] for t in rec["answers"]])
        out.append(rec)
    return out


def text_answer_of(answer: str, spans: Sequence[Sequence[int]]) -> str:
    """``answer`` with ``" {seg}"`` inserted after each target phrase (``spans``: [start, end) characters),
    PixelLM's ``text_answers`` form: the model emits its segmentation tokens there."""
    out, last = [], 0
    for a, b in sorted(spans, key=lambda s: s[1]):
        out += [answer[last:b], " " + SEG_PLACEHOLDER]
        last = b
    return "".join(out) + answer[last:]


# ------------------------------------------------------------------------------------------ dataset
class MuseDataset(Dataset):
    """The questions of ``<data_root>/muse/synthetic_{split}_muse.json`` with their images and per-target
    masks, in the model's input frame (:class:`~pixelllm.data.datasets.ResizePad`: longest side →
    ``image_size``, zero padding bottom/right, exactly as the other task datasets).

    Each item is a dict:

    ``image``        float [3, S, S] in [0, 1]         ``image_id``     int
    ``question``     str                               ``answer``       str (targets named in order)
    ``text_answer``  str, ``answer`` with ``{seg}`` after each target phrase
    ``masks``        bool [K, S, S], target k's instance mask (nearest-neighbour resize)
    ``boxes``        float [K, 4] normalised (x0, y0, x1, y1): pixels of the input frame ÷ S
    ``phrase_spans`` long [K, 2], [start, end) characters of target k's phrase in ``answer``
    ``num_targets``  K                                  ``id``           question id
    ``template``     str                                ``category_ids`` long [K]

    Text stays text: the model side inserts its segmentation tokens (``text_answer``) and tokenises.
    ``tokenizer`` is kept as :attr:`tokenizer` for that. Questions with more than ``max_targets`` targets are
    skipped (counted in :attr:`skips`). Every image file must exist (checked here, FileNotFoundError naming
    the question). ``decoded`` (:class:`~pixelllm.data.datasets.DecodedImages`, or
    :func:`~pixelllm.data.datasets.enable_image_cache`) keeps decoded images across epochs.
    """

    def __init__(self, data_root: str | os.PathLike, split: str, tokenizer=None, image_size: int = 128,
                 max_targets: int = 4, path: str | os.PathLike | None = None):
        if max_targets < 1:
            raise ValueError(f"MuseDataset: max_targets must be >= 1, got {max_targets}")
        self.data_root = Path(data_root)
        self.path = Path(path) if path is not None else muse_path(data_root, split)
        if not self.path.is_file():
            raise FileNotFoundError(f"MuseDataset: {self.path} not found (write it for a synthetic world with "
                                    "pixelllm.data.synthetic.muse.write_muse(data_root))")
        self.split, self.tokenizer, self.max_targets = split, tokenizer, max_targets
        self.image_root = self.data_root / "images"
        self.transform = ResizePad(image_size)
        self.decoded: DecodedImages | None = None
        self.skips = SkipCounter(f"MuseDataset {self.path.name}")
        self.records: list[dict] = []
        for i, r in enumerate(load_muse(self.path)):
            if len(r["answers"]) > max_targets:
                self.skips.add(f"skipped: more than {max_targets} targets", detail=f"question {r['id']}")
                continue
            self.records.append(r)
        self.skips.report()
        checked: set[str] = set()
        for i, r in enumerate(self.records):
            if r["file_name"] in checked:
                continue
            p = self.image_root / r["file_name"]
            if not p.is_file():
                raise FileNotFoundError(f"{self.path}: question id {r['id']} (image_id {r['image_id']}): "
                                        f"field 'file_name': image {p} not found")
            checked.add(r["file_name"])

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, p: Path):
        from PIL import Image

        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")

    def _image(self, rec: dict) -> tuple[torch.Tensor, int, int]:
        p = self.image_root / rec["file_name"]
        if self.decoded is None:
            img = self._load(p)
            return self.transform.image(img), img.height, img.width
        content, h, w = self.decoded.get(p, self.transform, lambda: self._load(p))
        return self.transform.pad(content), h, w

    def __getitem__(self, i: int) -> dict[str, Any]:
        from pixelllm.data.coco import decode_segmentation

        rec = self.records[i]
        image, h, w = self._image(rec)
        if (h, w) != (rec["height"], rec["width"]):
            raise DataFormatError(self.path, None, f"question id {rec['id']}: height/width",
                                  f"{rec['height']}×{rec['width']} but image {rec['file_name']} is {h}×{w}")
        S = self.transform.size
        targets = rec["answers"]
        masks = torch.stack([self.transform.mask(decode_segmentation(t["segmentation"], h, w)) for t in targets])
        boxes = self.transform.boxes([xywh_to_xyxy(t["bbox"]) for t in targets], h, w) / S
        return {"image": image, "image_id": rec["image_id"], "id": rec["id"], "question": rec["question"],
                "answer": rec["answer"], "text_answer": rec["text_answer"], "template": rec["template"],
                "masks": masks, "boxes": boxes.reshape(len(targets), 4),
                "phrase_spans": torch.tensor([t["phrase_span"] for t in targets], dtype=torch.long),
                "category_ids": torch.tensor([t["category_id"] for t in targets], dtype=torch.long),
                "num_targets": len(targets)}


def muse_collate(samples: Sequence[dict]) -> dict[str, Any]:
    """Batch :class:`MuseDataset` items, targets zero-padded to the batch's largest K (Kmax):

    ``images`` [B, 3, S, S]; ``masks`` bool [B, Kmax, S, S]; ``boxes`` [B, Kmax, 4]; ``phrase_spans``
    long [B, Kmax, 2]; ``category_ids`` long [B, Kmax]; ``target_mask`` bool [B, Kmax] (True = a real
    target); ``num_targets`` long [B]; lists ``questions``, ``answers``, ``text_answers``, ``templates``,
    ``image_ids``, ``ids``."""
    if not samples:
        raise ValueError("muse_collate: empty list of samples")
    b = len(samples)
    kmax = max(int(s["num_targets"]) for s in samples)
    S = samples[0]["image"].shape[-1]
    out: dict[str, Any] = {
        "images": torch.stack([s["image"] for s in samples]),
        "masks": torch.zeros(b, kmax, S, S, dtype=torch.bool),
        "boxes": torch.zeros(b, kmax, 4),
        "phrase_spans": torch.zeros(b, kmax, 2, dtype=torch.long),
        "category_ids": torch.zeros(b, kmax, dtype=torch.long),
        "target_mask": torch.zeros(b, kmax, dtype=torch.bool),
        "num_targets": torch.tensor([int(s["num_targets"]) for s in samples], dtype=torch.long),
    }
    for i, s in enumerate(samples):
        k = int(s["num_targets"])
        for key in ("masks", "boxes", "phrase_spans", "category_ids"):
            out[key][i, :k] = s[key]
        out["target_mask"][i, :k] = True
    for key, name in (("question", "questions"), ("answer", "answers"), ("text_answer", "text_answers"),
                      ("template", "templates"), ("image_id", "image_ids"), ("id", "ids")):
        out[name] = [s[key] for s in samples]
    return out


def target_masks_np(rec: dict) -> np.ndarray:
    """K×H×W bool instance masks of one :func:`load_muse` record, original image pixels (pycocotools)."""
    from pixelllm.data.coco import decode_segmentation

    return np.stack([decode_segmentation(t["segmentation"], rec["height"], rec["width"]).astype(bool)
                     for t in rec["answers"]])
