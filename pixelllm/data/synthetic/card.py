"""The markdown dataset card of a generated world, written from the statistics :func:`generate` returns."""
from __future__ import annotations

import os

from pixelllm.data import vocab as V
from pixelllm.data.synthetic.constants import SPLITS, TRACE_BAND


def write_dataset_card(path: str | os.PathLike, stats: dict) -> None:
    """Write the markdown dataset card (what is generated, counts, vocabulary, statistics)."""
    from pixelllm.utils import atomic_write_bytes

    c = stats["config"]
    ln, rf, vg = stats["localized_narratives"], stats["refcoco"], stats["vg"]
    L = [
        "# The synthetic world (generated)",
        "",
        "Written by `pixelllm.data.synthetic.generate` — do not edit by hand; regenerate with",
        f"`python -m data_prep.make_synthetic --out runs/full/data --n-scenes {c['n_scenes']} "
        f"--image-size {c['image_size']} --seed {c['seed']} --card data_prep/README.md`.",
        "",
        f"{c['n_scenes']} scenes of {c['image_size']}×{c['image_size']} px, seed {c['seed']}: a textured "
        "background (low-frequency noise, optional faint stripes, pixel noise) with 1–6 flat-coloured "
        "shapes that may partly occlude each other (each keeps ≥ 60 % of its pixels; overlapping shapes "
        "never share a colour). Every annotation is written in the real dataset format "
        "(see `docs/ARCHITECTURE.md`, layout `<run>/data/`). Same seed → byte-identical annotation files, "
        "whatever the number of workers.",
        "",
        "## Files",
        "",
        "| file | format | counts |",
        "|---|---|---|",
    ]
    fmt = {"scenes.json": "ground-truth scene graph", "captions/": "COCO captions",
           "coco/": "COCO instances (RLE)", "localized_narratives/": "Localized Narratives JSONL",
           "refcoco/refs": "refer API pickle (list of dicts)", "refcoco/instances": "COCO instances (all images)",
           "vg/region": "Visual Genome regions", "vg/image": "Visual Genome image data",
           "vg/densecap": "DenseCap splits"}
    for f, cnt in stats["files"].items():
        kind = next((v for k, v in fmt.items() if f.startswith(k)), "")
        L.append(f"| `{f}` | {kind} | " + ", ".join(f"{k} {v}" for k, v in cnt.items()) + " |")
    L.append(f"| `images/*.jpg` | JPEG q95 (4:4:4) | {c['n_scenes']} files, {stats['images_bytes'] / 1e6:.1f} MB |")
    L += ["", "## Splits (by image)", "", "| split | images | RefCOCO refs | RefCOCO sentences |", "|---|---|---|---|"]
    for sp in SPLITS:
        L.append(f"| {sp} | {stats['splits'][sp]} | {rf['refs'].get(sp, 0) if sp != 'test' else '—'} | "
                 f"{rf['sentences'].get(sp, 0) if sp != 'test' else '—'} |")
    for sp in ("testA", "testB"):
        L.append(f"| ↳ {sp} | — | {rf['refs'].get(sp, 0)} | {rf['sentences'].get(sp, 0)} |")
    L += ["",
          "RefCOCO's testA (people) / testB (other objects) split is mirrored by shape groups: a test image "
          "goes to **testA** if it has more *simple* shapes (" + ", ".join(V.SHAPE_GROUPS["simple"]) + ") than "
          "*complex* ones (" + ", ".join(V.SHAPE_GROUPS["complex"]) + "), else **testB** (ties at random), and "
          "only objects of that group are targets. The group is the COCO `supercategory`. The refs' "
          "`file_name` mimics the real per-ref names; open images by `image_id` (`images/{image_id:012d}.jpg`).",
          "", "## Vocabulary (`pixelllm/data/vocab.py`)", "",
          f"- shapes ({len(V.SHAPES)}): " + ", ".join(V.SHAPES),
          f"- colours ({len(V.COLORS)}): " + ", ".join(f"{k} {v}" for k, v in V.COLORS.items()),
          f"- sizes ({len(V.SIZES)}, radius / image side): " + ", ".join(f"{k} {v}" for k, v in V.SIZES.items()),
          "- backgrounds: " + ", ".join(V.BACKGROUNDS),
          "- relations: " + ", ".join(V.RELATIONS),
          "- positions (image thirds of the visible-box centre): " + ", ".join(V.POSITION_PHRASES.values()),
          "", "## Objects", "",
          "| objects per image | " + " | ".join(stats["objects_per_image"]) + " |",
          "|---|" + "---|" * len(stats["objects_per_image"]),
          "| images | " + " | ".join(str(v) for v in stats["objects_per_image"].values()) + " |",
          "",
          f"{stats['objects']['total']} objects. Shapes: " + ", ".join(f"{k} {v}" for k, v in stats["objects"]["shapes"].items())
          + ". Colours: " + ", ".join(f"{k} {v}" for k, v in stats["objects"]["colors"].items())
          + ". Sizes: " + ", ".join(f"{k} {v}" for k, v in stats["objects"]["sizes"].items()) + ".",
          "", "## Referring expressions", "",
          "Grammar `the [size] [colour] shape [relation the [size] [colour] shape]`; every expression is "
          "checked with `resolve_expression` to pick out exactly one object.", "",
          "| class | example | sentences | refs whose easiest unique expression is this class |", "|---|---|---|---|",
          f"| attribute | the red circle | {rf['expression_classes']['attribute']} | {rf['needed_class']['attribute']} |",
          f"| disambiguating | the small red circle | {rf['expression_classes']['disambiguating']} | {rf['needed_class']['disambiguating']} |",
          f"| spatial | the circle left of the blue star | {rf['expression_classes']['spatial']} | {rf['needed_class']['spatial']} |",
          "", "## Localized Narratives", "",
          f"{ln['records']} records, {ln['utterances']} utterances (1–3 words), {ln['trace_points']} trace points "
          f"({ln['points_outside_unit_square']} outside [0, 1], inside the ±{TRACE_BAND} band). The pointer hovers "
          "over an object while its words and position phrase are spoken and sweeps the image during "
          f"background sentences. {ln['excursions']} excursions out of the image between objects, "
          f"{ln['exits_after_last_word']} exits after the last word, {ln['records_with_split_segments']} records "
          "with more than one trace segment.",
          "", "## Real-world oddities (rate " + f"{c['oddity_rate']})", "",
          "| oddity | count |", "|---|---|",
          f"| LN utterance with start_time == end_time | {ln['oddities']['zero_duration']} |",
          f"| LN record with integer times | {ln['oddities']['integer_times']} |",
          f"| LN record with no trace | {ln['oddities']['no_trace']} |",
          f"| VG phrase with a trailing space | {vg['oddities']['trailing_space']} |",
          f"| VG box with negative x or y | {vg['oddities']['negative_xy']} |",
          *_muse_section(stats.get("muse")),
          "", "## Generation", "",
          f"{stats['timing']['seconds']} s with {stats['timing']['workers']} worker(s) "
          f"({stats['timing']['render_seconds']} s sampling/rendering/annotating, the rest writing files).", ""]
    atomic_write_bytes(path, "\n".join(L).encode())


def _muse_section(muse: dict | None) -> list[str]:
    """Card lines for the multi-target questions (:mod:`pixelllm.data.synthetic.muse`), if the world has them."""
    if not muse:
        return []
    from pixelllm.data.synthetic.muse import MAX_TARGETS, QUESTIONS_PER_IMAGE, TEMPLATES

    ks = [str(k) for k in range(1, MAX_TARGETS + 1)]
    L = ["", "## Multi-target questions (PixelLM MUSE-like)", "",
         "`muse/synthetic_{split}_muse.json`, made from `scenes.json` and the COCO instances by "
         "`pixelllm.data.synthetic.muse.write_muse` (a world without them gets them from `ensure_data`, nothing "
         f"else changes). {QUESTIONS_PER_IMAGE} questions per image whose answers name 1–{MAX_TARGETS} objects, "
         "each with its instance mask (the COCO RLE), box and the character span of its phrase in the answer; "
         "schema in `pixelllm/data/muse.py` and `docs/PAPER_NOTES.md` §7.1. Example: \"segment every red shape\" → "
         "\"the red circle, the red star and the red square\".", "",
         "| split | questions | images | " + " | ".join(f"{k} target{'s' * (k != '1')}" for k in ks)
         + " | mean targets |", "|---|" + "---|" * (len(ks) + 3)]
    for sp in SPLITS:
        if sp in muse:
            m = muse[sp]
            L.append(f"| {sp} | {m['questions']} | {m['images']} | " + " | ".join(str(m["by_targets"][k]) for k in ks)
                     + f" | {m['mean_targets']} |")
    L += ["", "| template | " + " | ".join(sp for sp in SPLITS if sp in muse) + " |",
          "|---|" + "---|" * sum(sp in muse for sp in SPLITS)]
    for t in TEMPLATES:
        L.append(f"| {t} | " + " | ".join(str(muse[sp]["by_template"].get(t, 0)) for sp in SPLITS if sp in muse) + " |")
    return L
