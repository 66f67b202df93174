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
from pixelllm.data.errors import DataFormatError, SkipCounter, check_file_name, check_type, read_json, require
from pixelllm.data.images import image_file, open_image
from pixelllm.data.segmentation import check_segmentation as coco_segmentation_check
from pixelllm.data.segmentation import rle_string_counts  # noqa: F401  (re-exported: the RLE run decoder)

#: placeholder of ``text_answer`` after each target's phrase (PixelLM's ``text_answers``)
SEG_PLACEHOLDER = "{seg}"
MUSE_VERSION = "1.0"


def muse_path(data_root: str | os.PathLike, split: str) -> Path:
    """``<data_root>/muse/synthetic_{split}_muse.json``."""
    return Path(data_root) / "muse" / f"synthetic_{split}_muse.json"


# ------------------------------------------------------------------------------------ segmentation
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
        coco_segmentation_check(seg, height, width, path, field)    # coordinates pycocotools can rasterise
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
                               "file_name": check_file_name(require(q, "file_name", str, path, None, pre), path, None,
                                                            pre + "file_name")}
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
            raise DataFormatError(path, None, pre + "text_answer", f"{ta.count(SEG_PLACEHOLDER)} {SEG_PLACEHOLDER} "
                                                                   f"placeholders for {len(targets)} targets")
        spans = [t["phrase_span"] for t in rec["answers"]]
        rec["text_answer"] = ta if ta is not None else text_answer_of(rec["answer"], spans)
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


def phrase_token_spans(tokenizer, text: str, spans: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Token ids of ``text`` (as ``tokenizer(text)`` gives them, EOS included) and, per character span
    [start, end) of ``spans``, the [first, last + 1) token indices that cover it — where a model puts the
    box of a named target (PixelLLM: the phrase's last token) or its segmentation tokens (PixelLM: after
    it). Needs a fast tokenizer (``return_offsets_mapping``); a token's leading space does not count as
    covering a phrase. Raises ValueError for a span no token covers."""
    enc = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    out = []
    for a, b in spans:
        hit = [k for k, (s, e) in enumerate(offsets) if e > s and s + (len(text[s:e]) - len(text[s:e].lstrip())) < b
               and e > a]
        if not hit:
            raise ValueError(f"phrase_token_spans: no token covers characters [{a}, {b}) of {text!r}")
        out.append([hit[0], hit[-1] + 1])
    return ids, out


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

    With a (fast) ``tokenizer`` the item also has ``answer_ids`` long [T] (``tokenizer(answer)``, EOS
    included) and ``phrase_token_spans`` long [K, 2] ([first, last + 1) token of each target's phrase,
    :func:`phrase_token_spans`); without one, text stays text and the model side tokenises (e.g. after
    putting its segmentation tokens at ``text_answer``'s ``{seg}``). Questions with more than
    ``max_targets`` targets are skipped (counted in :attr:`skips`). Every image file must exist (checked
    here, FileNotFoundError naming the question). ``decoded`` (:class:`~pixelllm.data.datasets.DecodedImages`, or
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
            p = image_file(self.image_root, r["file_name"], self.path, f"question id {r['id']}: file_name")
            if not p.is_file():
                raise FileNotFoundError(f"{self.path}: question id {r['id']} (image_id {r['image_id']}): "
                                        f"field 'file_name': image {p} not found")
            checked.add(r["file_name"])

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, p: Path):
        """RGB image of ``p`` (:func:`pixelllm.data.images.open_image`: corrupt / truncated / too large →
        DataFormatError naming the file)."""
        return open_image(p, what=f"MuseDataset {self.path.name}")

    def _image(self, rec: dict) -> tuple[torch.Tensor, int, int]:
        p = image_file(self.image_root, rec["file_name"], self.path, f"question id {rec['id']}: file_name")
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
                "num_targets": len(targets), **self._tokens(rec)}

    def _tokens(self, rec: dict) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            return {}
        ids, spans = phrase_token_spans(self.tokenizer, rec["answer"], [t["phrase_span"] for t in rec["answers"]])
        return {"answer_ids": torch.tensor(ids, dtype=torch.long),
                "phrase_token_spans": torch.tensor(spans, dtype=torch.long).reshape(-1, 2)}


def muse_collate(samples: Sequence[dict]) -> dict[str, Any]:
    """Batch :class:`MuseDataset` items, targets zero-padded to the batch's largest K (Kmax):

    ``images`` [B, 3, S, S]; ``masks`` bool [B, Kmax, S, S]; ``boxes`` [B, Kmax, 4]; ``phrase_spans``
    long [B, Kmax, 2]; ``category_ids`` long [B, Kmax]; ``target_mask`` bool [B, Kmax] (True = a real
    target); ``num_targets`` long [B]; lists ``questions``, ``answers``, ``text_answers``, ``templates``,
    ``image_ids``, ``ids``; with a tokenizer also ``answer_ids`` long [B, T] (pad 0), ``answer_mask`` bool
    [B, T] and ``phrase_token_spans`` long [B, Kmax, 2]."""
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
    if all("answer_ids" in s for s in samples):
        t = max(len(s["answer_ids"]) for s in samples)
        out["answer_ids"] = torch.zeros(b, t, dtype=torch.long)            # pad id 0 (T5 convention)
        out["answer_mask"] = torch.zeros(b, t, dtype=torch.bool)
        out["phrase_token_spans"] = torch.zeros(b, kmax, 2, dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s["answer_ids"])
            out["answer_ids"][i, :n], out["answer_mask"][i, :n] = s["answer_ids"], True
            out["phrase_token_spans"][i, : int(s["num_targets"])] = s["phrase_token_spans"]
    for key, name in (("question", "questions"), ("answer", "answers"), ("text_answer", "text_answers"),
                      ("template", "templates"), ("image_id", "image_ids"), ("id", "ids")):
        out[name] = [s[key] for s in samples]
    return out


def target_masks_np(rec: dict) -> np.ndarray:
    """K×H×W bool instance masks of one :func:`load_muse` record, original image pixels (pycocotools)."""
    from pixelllm.data.coco import decode_segmentation

    return np.stack([decode_segmentation(t["segmentation"], rec["height"], rec["width"]).astype(bool)
                     for t in rec["answers"]])


def object_masks(data_root: str | os.PathLike, split: str) -> dict[int, np.ndarray]:
    """image id → N×H×W bool masks of every object of the image (``coco/instances_{split}.json`` of a
    synthetic world, annotation order): the predictions of the trivial "every object" answer, a floor for
    multi-target scores (PAPER_NOTES.md §7.1)."""
    from pixelllm.data.coco import CocoInstances

    inst = CocoInstances(Path(data_root) / "coco" / f"instances_{split}.json")
    return {i: np.stack([inst.mask(o["id"]).astype(bool) for o in inst.objects(i)])
            for i in inst.image_ids() if inst.objects(i)}
