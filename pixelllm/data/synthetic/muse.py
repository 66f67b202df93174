"""Multi-target questions for the synthetic world in the MUSE-like format of :mod:`pixelllm.data.muse`
(PixelLM's benchmark, PAPER_NOTES.md §7.1): "segment every red shape" → "the red circle, the red star and
the red square", one instance mask per named target.

Everything is read from an existing world — ``scenes.json`` (each object's colour, shape, size word,
visible box and area) and ``coco/instances_{split}.json`` (its visible-part RLE mask, copied unchanged) —
so a world made before this module existed gets the files without being regenerated
(:func:`write_muse`, called by ``ensure_data`` and by :func:`~pixelllm.data.synthetic.world.generate`).

Question templates (each target set is computed from the scene and checked to hold 1–4 objects):

    colour        "segment every red shape"              all objects of a colour
    shape         "find every circle"                    all objects of a shape
    colour_shape  "segment the green triangle" / "... the red squares"
    size          "segment every small shape"            all objects of a size word
    superlative   "find the two largest squares"         the n biggest (or smallest) of a shape / of all;
                                                         only when they are bigger both by size word and by
                                                         visible area than every other one
    relation      "show every circle left of the star"   objects in relation to a uniquely named landmark
                                                         (:func:`~pixelllm.data.synthetic.language.relation_holds`),
                                                         only when no object is within a margin of the rule
    position      "segment every shape on the left"      image thirds of the box centre, with a margin
    exclusion     "find every shape except the red star" / "... every shape that is not blue"
    all           "segment every shape"                  every object (scenes of ≤ 4 objects)

The answer names the targets left to right (box centre x, then y) as "the <colour> <shape>" — with the
size word and/or the position phrase when another object shares colour and shape
(:func:`target_phrase`) — joined "a, b and c".

Balance: for each split, images in id order, each question picks the number of targets K with the fewest
questions so far among the Ks the image offers (ties broken by the seeded generator), preferring a
target set and a template not yet asked about that image. Deterministic: same world + seed → the same
bytes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pixelllm.data import vocab as V
from pixelllm.data.errors import DataFormatError, read_json, require
from pixelllm.data.muse import MUSE_VERSION, muse_path, text_answer_of
from pixelllm.data.synthetic.constants import NEXT_TO_MAX_GAP, RELATION_MIN_OFFSET, SPLITS
from pixelllm.data.synthetic.language import Descriptor, landmark_names, position_of, position_phrase

#: largest number of targets of a question (PixelLM's MUSE answers average 3.7 targets)
MAX_TARGETS = 4
#: questions written per image (train, val and test alike)
QUESTIONS_PER_IMAGE = 4
#: relation / position questions are skipped when an object lies within this fraction of the image side
#: of the rule's threshold (the answer would hinge on a pixel)
RULE_MARGIN = 0.02
VERBS = ("segment", "find", "show")
TEMPLATES = ("colour", "shape", "colour_shape", "size", "superlative", "relation", "position", "exclusion", "all")
SIZE_RANK = {s: k for k, s in enumerate(V.SIZES)}             # small 0 < medium 1 < big 2


def plural(shape: str) -> str:
    """"circle" → "circles", "cross" → "crosses"."""
    return shape + ("es" if shape.endswith("s") else "s")


def relation_margin(rel: str, a: Sequence[float], b: Sequence[float], width: int, height: int) -> float:
    """How clearly "A <rel> B" holds for visible boxes a, b ([x, y, w, h] pixels), in fractions of the image
    side: > 0 exactly when :func:`~pixelllm.data.synthetic.language.relation_holds` says it holds, and its
    size is the distance to the nearest threshold of that rule (offset beyond ``RELATION_MIN_OFFSET``,
    dominant axis, or gap below ``NEXT_TO_MAX_GAP``)."""
    side = float(max(width, height))
    dx = (b[0] + b[2] / 2) - (a[0] + a[2] / 2)
    dy = (b[1] + b[3] / 2) - (a[1] + a[3] / 2)
    if rel == "next to":
        gx = max(0.0, max(b[0] - (a[0] + a[2]), a[0] - (b[0] + b[2]))) / width
        gy = max(0.0, max(b[1] - (a[1] + a[3]), a[1] - (b[1] + b[3]))) / height
        return NEXT_TO_MAX_GAP - max(gx, gy)
    along, across, thr = {"left of": (dx, dy, RELATION_MIN_OFFSET * width),
                          "right of": (-dx, dy, RELATION_MIN_OFFSET * width),
                          "above": (dy, dx, RELATION_MIN_OFFSET * height),
                          "below": (-dy, dx, RELATION_MIN_OFFSET * height)}[rel]
    return min(along - thr, abs(along) - abs(across)) / side


def _reading_order(objs: list[dict]) -> list[dict]:
    return sorted(objs, key=lambda o: (o["bbox"][0] + o["bbox"][2] / 2, o["bbox"][1] + o["bbox"][3] / 2, o["id"]))


def target_phrase(obj: dict, scene: dict) -> str:
    """The shortest of "the red circle", "the big red circle", "the red circle on the left", "the big red
    circle on the left" (position: :func:`~pixelllm.data.synthetic.language.position_phrase`) that no other
    red circle of the scene shares; the longest when none is unique (identical twins)."""
    W, H = int(scene["width"]), int(scene["height"])
    twins = [o for o in scene["objects"] if o["id"] != obj["id"] and o["color"] == obj["color"]
             and o["shape"] == obj["shape"]]

    def name(o: dict, size: bool, where: bool) -> str:
        return ("the " + (f"{o['size']} " if size else "") + f"{o['color']} {o['shape']}"
                + (f" {position_phrase(o['bbox'], W, H)}" if where else ""))

    forms = [(False, False), (True, False), (False, True), (True, True)]
    return next((name(obj, *f) for f in forms if all(name(t, *f) != name(obj, *f) for t in twins)),
                name(obj, True, True))


def answer_of(targets: list[dict], scene: dict) -> tuple[str, list[str], list[list[int]]]:
    """(answer, per-target phrase, per-target [start, end) character span) for targets in answer order."""
    phrases = [target_phrase(o, scene) for o in targets]
    parts = phrases if len(phrases) < 3 else [", ".join(phrases[:-1]), phrases[-1]]
    answer = " and ".join(parts) if len(phrases) > 1 else phrases[0]
    spans, pos = [], 0
    for p in phrases:
        a = answer.index(p, pos)
        spans.append([a, a + len(p)])
        pos = a + len(p)
    return answer, phrases, spans


def candidate_questions(scene: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every (template, noun phrase, target ids in answer order) the templates (module docstring) give for
    one ``scenes.json`` image, with 1 ≤ K ≤ :data:`MAX_TARGETS` targets; noun phrases are unique."""
    objs, W, H = scene["objects"], int(scene["width"]), int(scene["height"])
    out: dict[str, tuple[str, tuple[int, ...]]] = {}

    def add(template: str, np_: str, sel: list[dict]) -> None:
        if 1 <= len(sel) <= MAX_TARGETS and np_ not in out:
            out[np_] = (template, tuple(o["id"] for o in _reading_order(sel)))

    colours = sorted({o["color"] for o in objs}, key=list(V.COLORS).index)
    shapes = sorted({o["shape"] for o in objs}, key=V.SHAPES.index)
    for c in colours:
        add("colour", f"every {c} shape", [o for o in objs if o["color"] == c])
    for s in shapes:
        add("shape", f"every {s}", [o for o in objs if o["shape"] == s])
    for c in colours:
        for s in shapes:
            sel = [o for o in objs if o["color"] == c and o["shape"] == s]
            add("colour_shape", f"the {c} {s}" if len(sel) == 1 else f"the {c} {plural(s)}", sel)
    for z in V.SIZES:
        add("size", f"every {z} shape", [o for o in objs if o["size"] == z])
    # superlatives: the n biggest / smallest, separated from the rest by size word and visible area
    for s in [None, *shapes]:
        group = [o for o in objs if s is None or o["shape"] == s]
        noun1, noun_n = (s, plural(s)) if s else ("shape", "shapes")
        for word, sign in (("largest", 1), ("smallest", -1)):
            ranked = sorted(group, key=lambda o: (sign * SIZE_RANK[o["size"]], sign * o["area"]), reverse=True)
            for n in range(1, min(MAX_TARGETS, len(group) - 1) + 1):
                top, rest = ranked[:n], ranked[n:]
                if (min(sign * SIZE_RANK[o["size"]] for o in top) > max(sign * SIZE_RANK[o["size"]] for o in rest)
                        and min(sign * o["area"] for o in top) > max(sign * o["area"] for o in rest)):
                    add("superlative", f"the {word} {noun1}" if n == 1 else f"the {V.NUMBER_WORDS[n]} {word} {noun_n}",
                        top)
    # relations to a uniquely named landmark
    names = landmark_names(scene)
    for lm in objs:
        d: Descriptor | None = names[lm["id"]]
        if d is None:
            continue
        for rel in V.RELATIONS:
            for s in [None, *shapes]:
                cands = [o for o in objs if o["id"] != lm["id"] and (s is None or o["shape"] == s)]
                m = [relation_margin(rel, o["bbox"], lm["bbox"], W, H) for o in cands]
                if not cands or any(abs(v) <= RULE_MARGIN for v in m):
                    continue
                add("relation", f"every {s or 'shape'} {rel} the {d.text()}", [o for o, v in zip(cands, m) if v > 0])
    # positions (image thirds of the visible-box centre) with a margin from the third lines
    for axis, side, phrase in ((0, "left", "on the left"), (0, "right", "on the right"),
                               (1, "top", "at the top"), (1, "bottom", "at the bottom")):
        size = W if axis == 0 else H
        centre = [(o["bbox"][axis] + o["bbox"][axis + 2] / 2) / size for o in objs]
        if any(min(abs(c - 1 / 3), abs(c - 2 / 3)) <= RULE_MARGIN for c in centre):
            continue
        sel = [o for o in objs if position_of(o["bbox"], W, H)[axis] == side]
        add("position", f"every shape {phrase}", sel)
    # exclusions: everything but a uniquely named object, or but one colour
    for lm in objs:
        d = names[lm["id"]]
        if d is not None:
            add("exclusion", f"every shape except the {d.text()}", [o for o in objs if o["id"] != lm["id"]])
    for c in colours:
        add("exclusion", f"every shape that is not {c}", [o for o in objs if o["color"] != c])
    add("all", "every shape", list(objs))
    return [(t, np_, ids) for np_, (t, ids) in out.items()]


def _select(cands: list[tuple[str, str, tuple[int, ...]]], n: int, counts: dict[int, int],
            rng: np.random.Generator) -> list[tuple[str, str, tuple[int, ...]]]:
    """n candidates of one image: each time the least-asked K available (module docstring), then an unused
    target set, then an unused template; ties at random. Updates ``counts``."""
    left, picked = list(cands), []
    used_sets: set[tuple[int, ...]] = set()
    used_templates: dict[str, int] = {}
    while left and len(picked) < n:
        keys = [(counts[len(c[2])], c[2] in used_sets, used_templates.get(c[0], 0)) for c in left]
        best = min(keys)
        ties = [i for i, k in enumerate(keys) if k == best]
        c = left.pop(ties[int(rng.integers(len(ties)))])
        picked.append(c)
        counts[len(c[2])] += 1
        used_sets.add(c[2])
        used_templates[c[0]] = used_templates.get(c[0], 0) + 1
    return picked


def _world_instances(root: Path, split: str) -> dict[int, dict]:
    """annotation id → annotation of ``coco/instances_{split}.json`` (fields checked)."""
    path = root / "coco" / f"instances_{split}.json"
    anns = require(read_json(path), "annotations", list, path, None)
    out = {}
    for i, a in enumerate(anns):
        pre = f"annotations[{i}]."
        aid = require(a, "id", int, path, None, pre)
        require(a, "segmentation", dict, path, None, pre)
        require(a, "bbox", list, path, None, pre)
        out[aid] = a
    return out


def muse_questions(scene: dict, instances: dict[int, dict], seed: int, counts: dict[int, int],
                   questions_per_image: int = QUESTIONS_PER_IMAGE,
                   instances_path: str | os.PathLike | None = None) -> list[dict]:
    """The MUSE-like records (:mod:`pixelllm.data.muse` schema) of one ``scenes.json`` image; ``instances``
    maps annotation id → COCO annotation (its ``segmentation`` is copied unchanged). ``counts`` (K →
    questions so far) is updated: it carries the balance across the images of a split."""
    iid = int(scene["image_id"])
    rng = np.random.default_rng([seed, iid])
    picked = _select(candidate_questions(scene), questions_per_image, counts, rng)
    by_id = {o["id"]: o for o in scene["objects"]}
    recs = []
    for q, (template, np_, ids) in enumerate(picked):
        targets = [by_id[i] for i in ids]
        answer, phrases, spans = answer_of(targets, scene)
        entries = []
        for o, p, sp in zip(targets, phrases, spans):
            a = instances.get(o["id"])
            if a is None or a.get("image_id") != iid or [float(v) for v in a["bbox"]] != [float(v) for v in o["bbox"]]:
                raise DataFormatError(instances_path, None, f"annotation {o['id']}",
                                      f"missing or not the object of scenes.json image {iid} (bbox {o['bbox']})")
            entries.append({"id": o["id"], "category_id": V.category_id(o["shape"]), "category_name": o["shape"],
                            "rephrased_name": p, "phrase_span": sp, "bbox": [float(v) for v in o["bbox"]],
                            "area": int(o["area"]), "segmentation": a["segmentation"]})
        verb = VERBS[int(rng.integers(len(VERBS)))]
        recs.append({"id": iid * 10 + q, "image_id": iid, "file_name": scene["file_name"],
                     "height": int(scene["height"]), "width": int(scene["width"]),
                     "question": f"{verb} {np_}", "answer": answer, "text_answer": text_answer_of(answer, spans),
                     "template": template, "answers": entries})
    return recs


def write_muse(data_root: str | os.PathLike, seed: int = 0, questions_per_image: int = QUESTIONS_PER_IMAGE,
               overwrite: bool = False) -> list[Path]:
    """Write ``muse/synthetic_{split}_muse.json`` for every split of the world at ``data_root`` (made by
    :func:`~pixelllm.data.synthetic.world.generate`) from its ``scenes.json`` and COCO instances, touching
    nothing else. Returns the files written: none when all three exist and ``overwrite`` is False.
    Same world + ``seed`` → byte-identical files. About 10 ms per image."""
    from pixelllm.utils import atomic_write_bytes

    if not 1 <= questions_per_image <= 10:
        raise ValueError(f"write_muse: questions_per_image must be 1..10 (question id = image_id·10 + q), "
                         f"got {questions_per_image}")
    root = Path(data_root)
    todo = [sp for sp in SPLITS if overwrite or not muse_path(root, sp).is_file()]
    if not todo:
        return []
    scenes_path = root / "scenes.json"
    images = require(read_json(scenes_path), "images", list, scenes_path, None)
    written = []
    for sp in todo:
        inst_path = root / "coco" / f"instances_{sp}.json"
        instances = _world_instances(root, sp)
        counts = {k: 0 for k in range(1, MAX_TARGETS + 1)}
        recs: list[dict] = []
        for scene in sorted((s for s in images if s.get("split") == sp), key=lambda s: int(s["image_id"])):
            recs += muse_questions(scene, instances, seed, counts, questions_per_image, inst_path)
        info = {"description": "multi-target segmentation questions of the PixelLLM synthetic world "
                               "(PixelLM MUSE-like)", "version": MUSE_VERSION, "split": sp, "seed": seed,
                "questions_per_image": questions_per_image, "max_targets": MAX_TARGETS}
        body = json.dumps({"info": info, "questions": recs}, separators=(",", ":"))
        atomic_write_bytes(muse_path(root, sp), (body + "\n").encode())
        written.append(muse_path(root, sp))
    return written


def muse_statistics(data_root: str | os.PathLike) -> dict[str, Any]:
    """Counts of the MUSE-like files of a world: per split the questions, images, questions by number of
    targets and by template, and the mean number of targets (for the dataset card)."""
    from pixelllm.data.muse import load_muse

    out: dict[str, Any] = {}
    for sp in SPLITS:
        p = muse_path(data_root, sp)
        if not p.is_file():
            continue
        recs = load_muse(p)
        ks = [len(r["answers"]) for r in recs]
        out[sp] = {"questions": len(recs), "images": len({r["image_id"] for r in recs}),
                   "by_targets": {str(k): ks.count(k) for k in range(1, MAX_TARGETS + 1)},
                   "by_template": {t: sum(r["template"] == t for r in recs) for t in TEMPLATES},
                   "mean_targets": round(float(np.mean(ks)), 3) if ks else 0.0}
    return out
