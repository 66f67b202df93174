"""The whole world: split assignment, chunked (optionally multi-process) generation, merging the
per-image results into every real-format annotation file, and :func:`generate`.

Sequential ids (captions, refs, sentences, VG regions) are assigned here, after merging, in image-id
order, so the output does not depend on the number of workers or the chunking.
"""
from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pixelllm.data import vocab as V
from pixelllm.data.pointing import dump_pointing, pointing_path, pointing_record
from pixelllm.data.synthetic.annotate import generate_chunk, replay_narrative
from pixelllm.data.synthetic.card import write_dataset_card
from pixelllm.data.synthetic.constants import DEFAULT_ODDITY_RATE, EXPRESSION_CLASSES, SPLITS


def _dump(path: Path, obj: Any, indent: int | None = None) -> None:
    from pixelllm.utils import atomic_write_bytes

    sep = (",", ":") if indent is None else (",", ": ")
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, separators=sep) + "\n").encode())


def assign_splits(n_scenes: int, seed: int, split_fractions: Sequence[float]) -> dict[int, str]:
    """image id (1..N) -> "train" | "val" | "test"; a seeded permutation cut at the fractions."""
    if len(split_fractions) != 3 or any(f < 0 for f in split_fractions) or abs(sum(split_fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {split_fractions}")
    perm = np.random.default_rng([seed, 2**31]).permutation(n_scenes) + 1
    n_train = int(round(split_fractions[0] * n_scenes))
    n_val = int(round(split_fractions[1] * n_scenes))
    split = {}
    for k, i in enumerate(perm.tolist()):
        split[i] = "train" if k < n_train else ("val" if k < n_train + n_val else "test")
    return split


def generate(out_dir: str | os.PathLike, n_scenes: int = 2000, image_size: int = 128, seed: int = 0,
             split_fractions: Sequence[float] = (0.8, 0.1, 0.1), workers: int | None = None,
             write_card: str | os.PathLike | None = None, oddity_rate: float = DEFAULT_ODDITY_RATE,
             progress: bool = True) -> dict:
    """Generate the synthetic world into ``out_dir`` (layout: :mod:`pixelllm.data.synthetic`).

    Args:
        n_scenes: number of images; ids 1..n_scenes.
        image_size: side S of the square images, pixels.
        seed: everything is a function of (seed, image id) — same seed, byte-identical annotations.
        split_fractions: train/val/test fractions of the images.
        workers: processes (default: CPU count, at most 8); the result does not depend on it.
        write_card: if given, write the dataset card (markdown) there.
        oddity_rate: probability of each real-world oddity per record/image.
    Returns the statistics (also written to ``out_dir/stats.json``).
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if n_scenes < 1 or seed < 0 or image_size < 32:
        raise ValueError(f"need n_scenes >= 1, seed >= 0 and image_size >= 32, got n_scenes={n_scenes}, "
                         f"seed={seed}, image_size={image_size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    split_of = assign_splits(n_scenes, seed, split_fractions)
    workers = max(1, min(workers or min(os.cpu_count() or 1, 8), 8))
    chunk = max(8, min(250, n_scenes // (workers * 8) or 1))
    items = [(i, split_of[i]) for i in range(1, n_scenes + 1)]
    jobs = [(str(out), items[k:k + chunk], image_size, seed, oddity_rate) for k in range(0, n_scenes, chunk)]
    results: list[dict] = []
    bar = tqdm(total=n_scenes, desc="synthetic world", unit="scene", disable=not progress)
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            results.extend(generate_chunk(job))
            bar.update(len(job[1]))
    else:
        import multiprocessing as mp

        # spawn: safe even when the caller (a notebook) has torch threads running.
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for res in pool.imap(generate_chunk, jobs):
                results.extend(res)
                bar.update(len(res))
    bar.close()
    t_render = time.perf_counter() - t_start
    stats = _write_annotations(out, results, image_size)
    from pixelllm.data.synthetic.muse import muse_statistics, write_muse

    write_muse(out, seed=seed, overwrite=True)                   # multi-target questions (PixelLM MUSE-like)
    stats["muse"] = muse_statistics(out)
    stats["config"] = {"n_scenes": n_scenes, "image_size": image_size, "seed": seed,
                       "split_fractions": list(split_fractions), "oddity_rate": oddity_rate}
    stats["timing"] = {"seconds": round(time.perf_counter() - t_start, 2),
                       "render_seconds": round(t_render, 2), "workers": workers}
    _dump(out / "stats.json", stats, indent=2)
    if write_card is not None:
        write_dataset_card(write_card, stats)
    return stats


def add_pointing_sidecars(out_dir: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Add the pointing sidecar (:mod:`pixelllm.data.pointing`) beside every LN file of a world that lacks
    it — a world generated before the sidecar existed — without regenerating or touching anything else.

    Each narrative is re-drawn from the world's seed and config (``stats.json``) and must equal its LN line
    byte for byte, so the sidecar provably belongs to these narratives; otherwise
    :class:`~pixelllm.data.errors.DataFormatError` names the LN file and line. Returns the files written
    (none when every sidecar is present and ``overwrite`` is False). About 2 ms per narrative.
    """
    from pixelllm.data.errors import DataFormatError
    from pixelllm.utils import atomic_write_bytes

    out = Path(out_dir)
    lns = [out / "localized_narratives" / f"synthetic_{sp}_localized_narratives.jsonl" for sp in SPLITS]
    todo = [ln for ln in lns if ln.is_file() and (overwrite or not pointing_path(ln).is_file())]
    if not todo:
        return []
    stats_path = out / "stats.json"
    conf = json.loads(stats_path.read_text()).get("config")
    keys = ("n_scenes", "image_size", "seed", "split_fractions", "oddity_rate")
    if not isinstance(conf, dict) or any(k not in conf for k in keys):
        raise DataFormatError(stats_path, None, "config", f"needs {', '.join(keys)} to replay the narratives")
    split_of = assign_splits(conf["n_scenes"], conf["seed"], conf["split_fractions"])
    written = []
    for ln in todo:
        recs = []
        for lineno, line in enumerate(ln.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            obj = json.loads(line)
            image_id = int(obj["image_id"])
            if image_id not in split_of:
                raise DataFormatError(ln, lineno, "image_id", f"{image_id} is not an image of this world "
                                      f"(1..{conf['n_scenes']})")
            replayed, targets = replay_narrative(image_id, split_of[image_id], conf["image_size"], conf["seed"],
                                                 conf["oddity_rate"])
            if replayed != line:
                raise DataFormatError(ln, lineno, None, "re-drawing this narrative from the config in "
                                      f"{stats_path} gives another record: the file was not made by generate() "
                                      "with that config, so its pointing ground truth cannot be recovered")
            recs.append(pointing_record(obj["image_id"], obj.get("annotator_id"), targets))
        atomic_write_bytes(pointing_path(ln), dump_pointing(recs))
        written.append(pointing_path(ln))
    return written


def _write_annotations(out: Path, results: list[dict], image_size: int) -> dict:
    """Merge the per-image results (in image-id order) into every annotation file; return counts."""
    from pixelllm.utils import atomic_write_bytes

    results.sort(key=lambda r: r["image_id"])
    categories = [{"id": V.category_id(s), "name": s, "supercategory": V.SHAPE_TO_GROUP[s]} for s in V.SHAPES]
    info = {"description": "PixelLLM synthetic world", "version": "1.0", "year": 2024}

    def image_entry(r: dict) -> dict:
        s = r["scene"]
        return {"id": s["image_id"], "file_name": s["file_name"], "width": s["width"], "height": s["height"]}

    stats: dict[str, Any] = {"splits": {}, "files": {}}
    by_split = {sp: [r for r in results if r["split"] == sp] for sp in SPLITS}
    _dump(out / "scenes.json", {"images": [r["scene"] for r in results]})
    stats["files"]["scenes.json"] = {"images": len(results)}
    cap_id = 1
    ln_counts = {"records": 0, "utterances": 0, "trace_points": 0, "points_outside_unit_square": 0,
                 "records_with_split_segments": 0, "excursions": 0, "exits_after_last_word": 0,
                 "oddities": {"zero_duration": 0, "integer_times": 0, "no_trace": 0}}
    for sp, rs in by_split.items():
        stats["splits"][sp] = len(rs)
        images = [image_entry(r) for r in rs]
        caps = []
        for r in rs:
            for c in r["captions"]:
                caps.append({"id": cap_id, "image_id": r["image_id"], "caption": c})
                cap_id += 1
        _dump(out / "captions" / f"captions_{sp}.json", {"info": info, "licenses": [], "images": images,
                                                          "annotations": caps})
        stats["files"][f"captions/captions_{sp}.json"] = {"images": len(images), "captions": len(caps)}
        anns = [a for r in rs for a in r["coco"]]
        _dump(out / "coco" / f"instances_{sp}.json", {"info": info, "licenses": [], "images": images,
                                                       "annotations": anns, "categories": categories})
        stats["files"][f"coco/instances_{sp}.json"] = {"images": len(images), "annotations": len(anns)}
        lines = "".join(r["ln"] + "\n" for r in rs)
        ln_path = f"localized_narratives/synthetic_{sp}_localized_narratives.jsonl"
        atomic_write_bytes(out / ln_path, lines.encode())
        stats["files"][ln_path] = {"records": len(rs)}
        atomic_write_bytes(pointing_path(out / ln_path), dump_pointing([r["pointing"] for r in rs]))
        stats["files"][str(pointing_path(ln_path))] = {"records": len(rs)}
        for r in rs:
            li = r["ln_info"]
            ln_counts["records"] += 1
            ln_counts["utterances"] += li["utterances"]
            ln_counts["trace_points"] += li["points"]
            ln_counts["points_outside_unit_square"] += li["points_outside"]
            ln_counts["records_with_split_segments"] += li["split_segments"]
            ln_counts["excursions"] += li["excursions"]
            ln_counts["exits_after_last_word"] += li["exits"]
            for k in ln_counts["oddities"]:
                ln_counts["oddities"][k] += li[k]
    stats["localized_narratives"] = ln_counts
    # RefCOCO (refer API): refs(unc).p + instances.json over all images.
    refs, ref_id, sent_id = [], 1, 1
    ref_stats = {"refs": {}, "sentences": {}, "expression_classes": {c: 0 for c in EXPRESSION_CLASSES},
                 "needed_class": {c: 0 for c in EXPRESSION_CLASSES}}
    for r in results:
        for ref in r["refs"]:
            sents = []
            for e in ref["sentences"]:
                sents.append({"tokens": e.split(), "raw": e, "sent": e, "sent_id": sent_id})
                sent_id += 1
            refs.append({"ref_id": ref_id, "ann_id": ref["ann_id"], "image_id": r["image_id"],
                         "split": ref["split"], "category_id": ref["category_id"],
                         "sent_ids": [s["sent_id"] for s in sents],
                         "file_name": f"synthetic_{r['image_id']:012d}_{ref['ann_id']}.jpg",
                         "sentences": sents})
            ref_id += 1
            ref_stats["refs"][ref["split"]] = ref_stats["refs"].get(ref["split"], 0) + 1
            ref_stats["sentences"][ref["split"]] = ref_stats["sentences"].get(ref["split"], 0) + len(sents)
            for c in ref["classes"]:
                ref_stats["expression_classes"][c] += 1
            ref_stats["needed_class"][ref["needed"]] += 1
    (out / "refcoco").mkdir(parents=True, exist_ok=True)
    # Round-trip through JSON first: pickle memoises shared string objects, and whether two equal
    # strings are one object depends on which process built them; this makes the bytes canonical.
    atomic_write_bytes(out / "refcoco" / "refs(unc).p", pickle.dumps(json.loads(json.dumps(refs)), protocol=2))
    _dump(out / "refcoco" / "instances.json", {"info": info, "licenses": [],
                                               "images": [image_entry(r) for r in results],
                                               "annotations": [a for r in results for a in r["coco"]],
                                               "categories": categories})
    stats["files"]["refcoco/refs(unc).p"] = {"refs": len(refs), "sentences": sent_id - 1}
    stats["files"]["refcoco/instances.json"] = {"images": len(results),
                                                "annotations": sum(len(r["coco"]) for r in results)}
    stats["refcoco"] = ref_stats
    # Visual Genome.
    region_id, vg, vg_odd = 1, [], {"trailing_space": 0, "negative_xy": 0}
    for r in results:
        regs = []
        for reg in r["regions"]:
            regs.append({"region_id": region_id, **reg})
            region_id += 1
        vg.append({"id": r["image_id"], "regions": regs})
        for k in vg_odd:
            vg_odd[k] += r["vg_oddities"][k]
    _dump(out / "vg" / "region_descriptions.json", vg)
    _dump(out / "vg" / "image_data.json", [
        {"image_id": r["image_id"], "width": r["scene"]["width"], "height": r["scene"]["height"],
         "coco_id": r["image_id"], "flickr_id": None,
         "url": f"https://synthetic.invalid/images/{r['image_id']:012d}.jpg"} for r in results])
    _dump(out / "vg" / "densecap_splits.json", {sp: [r["image_id"] for r in by_split[sp]] for sp in SPLITS})
    stats["files"]["vg/region_descriptions.json"] = {"images": len(vg), "regions": region_id - 1}
    stats["files"]["vg/image_data.json"] = {"images": len(results)}
    stats["files"]["vg/densecap_splits.json"] = {sp: len(by_split[sp]) for sp in SPLITS}
    stats["vg"] = {"regions": region_id - 1, "oddities": vg_odd}
    # Scene statistics.
    n_obj: dict[str, int] = {}
    shapes = {s: 0 for s in V.SHAPES}
    colors = {c: 0 for c in V.COLORS}
    sizes = {s: 0 for s in V.SIZES}
    for r in results:
        objs = r["scene"]["objects"]
        n_obj[str(len(objs))] = n_obj.get(str(len(objs)), 0) + 1
        for o in objs:
            shapes[o["shape"]] += 1
            colors[o["color"]] += 1
            sizes[o["size"]] += 1
    stats["objects_per_image"] = dict(sorted(n_obj.items()))
    stats["objects"] = {"total": sum(shapes.values()), "shapes": shapes, "colors": colors, "sizes": sizes}
    stats["image_size"] = image_size
    stats["images_bytes"] = sum(f.stat().st_size for f in (out / "images").glob("*.jpg"))
    return stats
