"""One image -> all its annotations: COCO RLE instances, RefCOCO refs, VG regions, captions and the
narrative, as plain data; :func:`generate_chunk` is the worker that samples, renders, saves the JPEG and
annotates a chunk of images (it runs in the worker processes).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from pixelllm.data import vocab as V
from pixelllm.data.pointing import pointing_record
from pixelllm.data.synthetic.constants import EXPRESSION_CLASSES
from pixelllm.data.synthetic.language import landmark_names, referring_expressions
from pixelllm.data.synthetic.scene import Scene, render_scene, sample_scene, visible_masks
from pixelllm.data.synthetic.text import captions_for_scene, narrative_for_scene, region_phrases_for_object


def _rle_annotations(scene: Scene, masks: np.ndarray) -> list[dict]:
    """COCO instance annotations (RLE via pycocotools) of the visible masks."""
    from pycocotools import mask as mask_util

    if len(scene.objects) == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    areas, boxes = mask_util.area(rles), mask_util.toBbox(rles)
    anns = []
    for o, rle, a, b in zip(scene.objects, rles, areas, boxes):
        anns.append({"id": o.id, "image_id": scene.image_id, "category_id": V.category_id(o.shape),
                     "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                     "area": float(a), "bbox": [float(v) for v in b], "iscrowd": 0})
    return anns


def _annotate(scene: Scene, masks: np.ndarray, rng: np.random.Generator, oddity_rate: float) -> dict:
    """Every annotation of one image as plain data; ids that must be sequential are assigned later."""
    W, H = scene.width, scene.height
    record, targets, ln_info = narrative_for_scene(scene, rng, masks, oddity_rate)
    # RefCOCO: test images go to testA or testB by the shape group with more objects (ties at random)
    # and only that group's objects become targets, like RefCOCO's people / non-people test splits.
    groups = [V.SHAPE_TO_GROUP[o.shape] for o in scene.objects]
    if scene.split == "test":
        na, nb = groups.count("simple"), groups.count("complex")
        g = "simple" if na > nb else "complex" if nb > na else ("simple", "complex")[rng.integers(2)]
        ref_split, ref_group = V.TEST_SPLIT_OF_GROUP[g], g
    else:
        ref_split, ref_group = scene.split, None
    refs = []
    landmarks = landmark_names(scene)
    for o, g in zip(scene.objects, groups):
        if ref_group is not None and g != ref_group:
            continue
        by_class = referring_expressions(scene, o.id, landmarks)
        available = [c for c in EXPRESSION_CLASSES if by_class[c]]
        if not available:
            continue
        chosen = [(c, by_class[c][rng.integers(len(by_class[c]))]) for c in available]
        if len(chosen) < 3:                                      # a second phrasing of some class
            pool = [(c, e) for c in available for e in by_class[c] if (c, e) not in chosen]
            if pool:
                chosen.append(pool[rng.integers(len(pool))])
        refs.append({"ann_id": o.id, "category_id": V.category_id(o.shape), "split": ref_split,
                     "sentences": [e for _, e in chosen], "classes": [c for c, _ in chosen],
                     "needed": available[0]})
    # Visual Genome regions: one phrase per object, a second (jittered box) for some objects.
    regions, vg_odd = [], {"trailing_space": 0, "negative_xy": 0}
    for o in scene.objects:
        phrases = region_phrases_for_object(scene, o, rng)
        picks = [phrases[rng.integers(len(phrases))]]
        if rng.random() < 0.3:
            picks.append(phrases[rng.integers(len(phrases))])
        for j, ph in enumerate(picks):
            x, y, w, h = (int(v) for v in o.bbox)
            if j > 0:                                            # a second annotator's looser box
                x, y = max(0, x + int(rng.integers(-1, 2))), max(0, y + int(rng.integers(-1, 2)))
                w, h = min(W - x, w + int(rng.integers(0, 3))), min(H - y, h + int(rng.integers(0, 3)))
            if rng.random() < oddity_rate:
                ph += " "
                vg_odd["trailing_space"] += 1
            regions.append({"image_id": scene.image_id, "phrase": ph, "x": x, "y": y, "width": w, "height": h})
    if regions and rng.random() < oddity_rate:                   # a box drawn partly outside the image
        r = min(regions, key=lambda r: min(r["x"], r["y"]))
        k = "x" if r["x"] <= r["y"] else "y"
        shift = r[k] + int(rng.integers(1, 4))
        r[k] -= shift
        r["width" if k == "x" else "height"] += shift
        vg_odd["negative_xy"] = 1
    return {"image_id": scene.image_id, "split": scene.split, "scene": scene.to_json(),
            "coco": _rle_annotations(scene, masks), "captions": captions_for_scene(scene, rng),
            "ln": json.dumps(record, separators=(", ", ": ")), "ln_info": ln_info,
            "pointing": pointing_record(record["image_id"], record["annotator_id"], targets),
            "refs": refs, "regions": regions, "vg_oddities": vg_odd}


def scene_of(image_id: int, split: str, image_size: int, seed: int) -> tuple[np.random.Generator, Scene]:
    """Scene ``image_id`` of the world of ``seed`` and its generator, in the state the annotations
    (:func:`_annotate`, which starts with the narrative) draw from next."""
    rng = np.random.default_rng([seed, image_id])
    return rng, sample_scene(rng, image_size, image_id=image_id, split=split)


def replay_narrative(image_id: int, split: str, image_size: int, seed: int,
                     oddity_rate: float) -> tuple[str, list]:
    """Re-draw the narrative of scene ``image_id`` without rendering or writing anything →
    ``(LN line as written, per-utterance pointer targets)``; used to add the pointing sidecar to a world
    made before it existed (:func:`pixelllm.data.synthetic.world.add_pointing_sidecars`)."""
    rng, scene = scene_of(image_id, split, image_size, seed)
    record, targets, _ = narrative_for_scene(scene, rng, visible_masks(scene), oddity_rate)
    return json.dumps(record, separators=(", ", ": ")), targets


def generate_chunk(args: tuple) -> list[dict]:
    """Worker: sample, render, save JPEGs and annotate the scenes ``items`` = [(image_id, split)]."""
    from PIL import Image

    out_dir, items, image_size, seed, oddity_rate = args
    out = []
    for image_id, split in items:
        rng, scene = scene_of(image_id, split, image_size, seed)
        image, masks = render_scene(scene)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=95, subsampling=0)
        (Path(out_dir) / "images" / scene.file_name).write_bytes(buf.getvalue())
        out.append(_annotate(scene, masks, rng, oddity_rate))
    return out
