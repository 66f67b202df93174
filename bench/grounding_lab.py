"""Grounding lab: one hypothesis about per-word pointing / referring boxes answered in minutes.

A *recipe* is a named set of config overrides for stage 2 (``ln_trace``) and referring localization
(``refcoco``). The lab trains stage 2 from the run's stage-1 checkpoint for a fixed number of steps, scores
its per-word points teacher-forced on the first N LN val narratives (``point_l1``, its image-centre
baseline, and ``pointing_accuracy`` when the world has its pointing sidecar), then fine-tunes referring
localization from it for a fixed number of steps and scores P@0.5 on the first N val expressions. Step
counts and seeds are fixed, so a slower CPU gets the same numbers later; the minutes are reported.

    python bench/grounding_lab.py --recipe pointer --seeds 0 1
    python bench/grounding_lab.py --recipe paper_mlp --seeds 0 1 --trace-steps 300 --refer-steps 200
    python bench/grounding_lab.py --table          # rewrite docs/GROUNDING_LAB.md's table from the runs

Every run appends one JSON line to ``results/grounding_lab.jsonl``; ``--table`` renders them (mean over
seeds, and each seed) into the marked block of ``docs/GROUNDING_LAB.md``. Runs go to
``<run>/lab/<recipe>/seed<k>`` (deleted after scoring unless ``--keep``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOG = REPO / "results" / "grounding_lab.jsonl"
DOC = REPO / "docs" / "GROUNDING_LAB.md"
BEGIN, END = "<!-- lab-table:begin -->", "<!-- lab-table:end -->"

PAPER_MLP = {"head": "mlp", "semantic_trainable": True}                       # the paper's head and encoder
PAPER_MLP_BOX = {**PAPER_MLP, "head_parametrization": "center_size"}           # + boxes as centre + size
POINTER = {"head": "pointer", "semantic_trainable": True}
FROZEN = {"head": "pointer", "semantic_trainable": False}                      # the pointer recipe of record
#: what every row starts from, whatever the configs of record adopt later: no head-lr multiplier, the paper's
#: alignment, the paper's point state, no context layer / stem / cell loss (a recipe names what it changes)
LAB_BASE = {"lr_multipliers": {}, "ln_alignment": "official", "cell_weight": 0.0, "word_weights": {}}
LAB_BASE_MODEL = {"point_state": "emit", "pointer_context": 0, "pointer_stem": 0}


#: the synthetic world's shape nouns, singular and plural (pixelllm.data.vocab.SHAPES)
SHAPE_NOUNS = ("circle", "circles", "square", "squares", "triangle", "triangles", "star", "stars", "diamond",
               "diamonds", "cross", "crosses")


def both(**over) -> dict:
    """The same overrides for stage 2 and referring (``model_overrides`` merged over each config's own)."""
    return {"ln_trace": dict(over), "refcoco": dict(over)}


def context_span_read(model: dict | None = None, trace: dict | None = None) -> dict:
    """The three pointing levers (``pointer_lr5_context_span_read``: head lr ×5; stage 2 with the context layer,
    span targets and the read state; referring with the read state, no context layer) plus a row's own
    change: ``model`` overrides for both stages, ``trace`` config overrides for stage 2 only."""
    model, trace = model or {}, trace or {}
    lr = {"trace_head.": 5.0}
    return {"ln_trace": {"model_overrides": {**FROZEN, "pointer_context": 1, "point_state": "read", **model},
                         "lr_multipliers": lr, "ln_alignment": "span", **trace},
            "refcoco": {"model_overrides": {**FROZEN, "point_state": "read", **model}, "lr_multipliers": dict(lr)}}


def refer_only(model: dict | None = None, refseg: dict | None = None, **over) -> dict:
    """A referring-only row: the referring recipe of record (head lr ×5, the read state, no context layer)
    from the stage 2 of record (run with ``--trace-steps 0``), plus the row's own change: ``model``
    overrides, referring config overrides ``over``, mask-adapter (``refseg``) overrides ``refseg``."""
    refcoco = context_span_read(model=model)["refcoco"]
    return {"refcoco": {**refcoco, **over}, "refseg": dict(refseg or {})}


#: recipe name → (what it tests, {"ln_trace": overrides, "refcoco": overrides}); overrides are
#: ``get_config`` overrides (``model_overrides`` are merged over the config's own), so every recipe names
#: its head and whether the semantic ViT trains.
RECIPES: dict[str, tuple[str, dict]] = {
    "paper_mlp": ("paper head: 4-layer MLP on h_i, corners (trace); centre+size at EOS (refer); ViT trains",
                  {"ln_trace": {"model_overrides": PAPER_MLP}, "refcoco": {"model_overrides": PAPER_MLP_BOX}}),
    "spatial": ("two attention-weighted corners over the 8x8 grid; ViT trains",
                both(model_overrides={"head": "spatial", "semantic_trainable": True})),
    "pointer": ("pointer head: soft-argmax centre + sub-cell offset, size MLP; ViT trains",
                both(model_overrides=POINTER)),
    "pointer_frozen_sem": ("pointer head, semantic ViT frozen (whole grid cached) = the configs of record",
                           both(model_overrides=FROZEN)),
    "mlp_frozen_sem": ("paper MLP head, semantic ViT frozen (head change alone, same budget)",
                       {"ln_trace": {"model_overrides": {**PAPER_MLP, "semantic_trainable": False}},
                        "refcoco": {"model_overrides": {**PAPER_MLP_BOX, "semantic_trainable": False}}}),
    "pointer_head_lr5": ("pointer head (ViT frozen) with 5x the lr of the pretrained parts",
                         both(model_overrides=FROZEN, lr_multipliers={"trace_head.": 5.0})),
    "pointer_refer_mix": ("pointer head (ViT frozen); referring boxes mixed into stage 2 (trace 2 : caption 1 : refer 1, GIoU 1)",
                          {"ln_trace": {"model_overrides": FROZEN, "giou_weight": 1.0,
                                        "tasks": {"trace": 2.0, "caption": 1.0, "refer": 1.0},
                                        "prompts": {"trace": "A long image caption:",
                                                    "caption": "A short image caption:",
                                                    "refer": "where is {expr}"}},
                           "refcoco": {"model_overrides": FROZEN}}),
    "pointer_lambda1": ("pointer head (ViT frozen), point weight lambda 1.0 instead of the paper's 0.1",
                        both(model_overrides=FROZEN, lambda_point=1.0)),
    "pointer_lambda1_refer_mix": ("pointer head (ViT frozen), lambda 1.0 and referring boxes mixed into stage 2 (the two best levers together)",
                                  {"ln_trace": {"model_overrides": FROZEN, "lambda_point": 1.0, "giou_weight": 1.0,
                                                "tasks": {"trace": 2.0, "caption": 1.0, "refer": 1.0},
                                                "prompts": {"trace": "A long image caption:",
                                                            "caption": "A short image caption:",
                                                            "refer": "where is {expr}"}},
                                   "refcoco": {"model_overrides": FROZEN, "lambda_point": 1.0}}),
    "pointer_lr5_grouped": ("pointer head (ViT frozen), head lr x5, stage-2 batches grouped by target length (less padding)",
                            {"ln_trace": {"model_overrides": FROZEN, "lr_multipliers": {"trace_head.": 5.0},
                                          "group_by_length": True},
                             "refcoco": {"model_overrides": FROZEN, "lr_multipliers": {"trace_head.": 5.0}}}),
    "pointer_lr5_cell": ("pointer head (ViT frozen), head lr x5, plus a cross entropy on its attention over the grid (target: the cell of the target box centre, weight 1)",
                         both(model_overrides=FROZEN, lr_multipliers={"trace_head.": 5.0}, cell_weight=1.0)),
    "pointer_lr5_span": ("pointer head (ViT frozen), head lr x5, each LN token's target from the utterance it was spoken in (ln_alignment span) instead of by relative position",
                         {"ln_trace": {"model_overrides": FROZEN, "lr_multipliers": {"trace_head.": 5.0},
                                       "ln_alignment": "span"},
                          "refcoco": {"model_overrides": FROZEN, "lr_multipliers": {"trace_head.": 5.0}}}),
    "pointer_lr5_read": ("pointer head (ViT frozen), head lr x5, word i's point read from the decoder state that has read w_i (point_state read) instead of the one that predicts it",
                         both(model_overrides={**FROZEN, "point_state": "read"}, lr_multipliers={"trace_head.": 5.0})),
    "pointer_lr5_stem": ("pointer head (ViT frozen), head lr x5, reading a 16x16 grid: the 8x8 features upsampled + a stride-8 conv stem on the pixels (64 channels) trained with the head",
                         both(model_overrides={**FROZEN, "pointer_stem": 64}, lr_multipliers={"trace_head.": 5.0})),
    "pointer_lr5_lora_release": ("pointer head (ViT frozen), head lr x5, LoRA also on the decoder's cross-attention and the encoder (the release's targets) so decoder states can read the image differently",
                                 both(model_overrides={**FROZEN, "lora_targets": "release"}, lr_multipliers={"trace_head.": 5.0})),
    "pointer_lr5_context": ("pointer head (ViT frozen), head lr x5, one causal self-attention layer over the decoder states inside the head before its query",
                            both(model_overrides={**FROZEN, "pointer_context": 1}, lr_multipliers={"trace_head.": 5.0})),
    "pointer_lr5_context_refer_plain": ("as pointer_lr5_context in stage 2; referring without the context layer (its weights left out), since with it the box collapsed",
                                        {"ln_trace": {"model_overrides": {**FROZEN, "pointer_context": 1},
                                                      "lr_multipliers": {"trace_head.": 5.0}},
                                         "refcoco": {"model_overrides": FROZEN, "lr_multipliers": {"trace_head.": 5.0}}}),
    "pointer_lr5_context2_refer_plain": ("as pointer_lr5_context_refer_plain with two causal self-attention layers in the head",
                                         {"ln_trace": {"model_overrides": {**FROZEN, "pointer_context": 2},
                                                       "lr_multipliers": {"trace_head.": 5.0}},
                                          "refcoco": {"model_overrides": FROZEN, "lr_multipliers": {"trace_head.": 5.0}}}),
    "pointer_lr5_context_span_read": ("stage 2 with the three pointing levers together: the context layer, span targets and the read state; referring without the context layer",
                                      context_span_read()),
    "pointer_lr5_context_span_read_lambda1": ("the three pointing levers (the configs of record since) with point weight lambda 1.0 instead of the paper's 0.1 in stage 2; referring as the record",
                                              context_span_read(trace={"lambda_point": 1.0})),
    "pointer_lr5_context_span_read_grid": ("the configs of record plus the whole 8x8 grid as 64 extra LM tokens (8x8 ROIAlign of the whole-image box, roi_tokens 8): the 32 queries lose which shape is where",
                                           context_span_read(model={"roi_tokens": 8})),
    "pointer_lr5_context_span_read_shape5": ("the configs of record with the caption CE of the shape nouns (singular and plural) x5 in stage 2: one LN target token in 13 is a shape noun, and free-running captions name the wrong shape",
                                             context_span_read(trace={"word_weights": {w: 5.0 for w in SHAPE_NOUNS}})),
    # referring-only rows (--trace-steps 0 --refseg-steps 200): the box and the mask it prompts
    "refer_record": ("the referring recipe of record (head lr x5, read state) from the stage 2 of record; mask adapter as the record",
                     refer_only()),
    "refer_head_lr10": ("the box head is still starved: 10x the lr for it instead of 5x", refer_only(lr_multipliers={"trace_head.": 10.0})),
    "refer_lr2x": ("LoRA and the projections adapt too slowly for referring: base lr 2e-3 instead of 1e-3 (head still x5)",
                   refer_only(lr=2e-3)),
    "refer_lr_half": ("the referring learning rate of record is too high (2x the base lr and 10x the head's both hurt): base lr 5e-4 instead of 1e-3 (head still x5)",
                      refer_only(lr=5e-4)),
    "refer_head_lr2": ("the head's 5x is too high for referring: 2x instead", refer_only(lr_multipliers={"trace_head.": 2.0})),
    "refer_head_lr2_batch64": ("the two levers that lifted referring add up: head lr x2 and batch 64",
                               refer_only(lr_multipliers={"trace_head.": 2.0}, batch_size=64)),
    "refer_giou2": ("the box terms are weak next to the expression's CE: GIoU weight 2 instead of 1", refer_only(giou_weight=2.0)),
    "refer_lambda1": ("the L1 box term is too weak: lambda 1.0 instead of 0.1 (L1 in pixels)", refer_only(lambda_point=1.0)),
    "refer_lora_release": ("decoder states cannot read the image differently enough: LoRA also on the decoder's cross-attention and the encoder (the release's targets)",
                           refer_only(model={"lora_targets": "release"})),
    "refer_batch64": ("noisy gradients: batch 64 instead of 32 (twice the samples per step)", refer_only(batch_size=64)),
    "refseg_adapter600": ("the mask adapter is undertrained: 600 adapter steps instead of 200 (the box unchanged)",
                          refer_only(refseg={"steps": 600})),
    "refseg_singlemask": ("SAM's best-of-3 choice by predicted IoU picks wrong masks: the single-mask token instead",
                          refer_only(refseg={"multimask_output": False})),
    "pointer_trace_only": ("pointer head (ViT frozen), stage 2 on LN only (no short captions mixed in)",
                           {"ln_trace": {"model_overrides": FROZEN, "tasks": {"trace": 1.0}},
                            "refcoco": {"model_overrides": FROZEN}}),
}


def merged(cfg_name: str, recipe: dict, extra: dict, smoke: bool):
    from pixelllm.configs import get_config

    base = get_config(cfg_name, smoke=smoke)
    # the lab's base is the config of record reset to LAB_BASE: a recipe names its own levers, so a row means
    # the same whatever the configs of record adopt later
    over = {**LAB_BASE, **recipe.get(cfg_name, {})}
    over["model_overrides"] = {**base.model_overrides, **LAB_BASE_MODEL, **over.get("model_overrides", {})}
    return get_config(cfg_name, smoke=smoke, overrides={**over, **extra})


#: free-running part of a lab row: the first CAPTION_IMAGES val images, the release's beam search (4 beams)
CAPTION_IMAGES, NUM_BEAMS, MAX_NEW_TOKENS = 64, 4, 48


def score_trace(model, cfg, paths, tok, n: int) -> dict:
    """Per-word metrics on the first ``n`` LN val narratives: teacher-forced ``point_l1`` and its image-centre
    baseline, ``pointing_accuracy`` and its baselines; free-running on the first :data:`CAPTION_IMAGES` of
    their images, ``pointing_accuracy_generated`` (and ``_existing``: phrases that name an object of the image)
    and the captions' CIDEr-D against every val narrative of the image (PAPER_NOTES.md §2.6, §2.8)."""
    from torch.utils.data import Subset

    from pixelllm.engine.datasets import task_dataset
    from pixelllm.engine.evaluate import evaluate_pointing
    from pixelllm.eval import caption_metrics

    val = task_dataset("trace", "val", cfg, paths, tok, model.image_size, return_trace_samples=True)
    res = evaluate_pointing(model, Subset(val, range(min(n, len(val)))), tok, caption_images=CAPTION_IMAGES,
                            num_beams=NUM_BEAMS, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    refs: dict = {}
    for narr in val.narratives:
        refs.setdefault(str(narr.image_id), []).append(narr.caption)
    res["CIDEr-D"] = caption_metrics({g["image_id"]: g["text"] for g in res["generated"]}, refs,
                                     metrics=("CIDEr-D",))["CIDEr-D"]
    keep = ("point_l1", "centre_l1", "ce", "pointing_accuracy", "pointing_accuracy_centre",
            "pointing_accuracy_random_object", "pointing_accuracy_target", "pointing_accuracy_identified",
            "pointing_accuracy_unidentified", "identified_fraction", "pointing_accuracy_relative_position",
            "pointing_accuracy_target_relative_position", "pointing_accuracy_generated",
            "pointing_accuracy_generated_existing", "pointing_accuracy_generated_colour", "n_phrases", "n_phrases_existing", "CIDEr-D")
    return {k: res[k] for k in keep if k in res}


def score_refseg(recipe: dict, seed: int, steps: int, out: Path, val: dict, tok, smoke: bool) -> dict:
    """Referring segmentation of the row's referring model (``out/refcoco``): the mask adapter trained for
    ``steps`` steps (the ``refseg`` config of record with a warm-up of ``steps // 10``; the recipe's ``"refseg"``
    overrides go on top and may change the steps, not that warm-up), then cIoU and gIoU of the masks its
    predicted boxes prompt on ``val`` (the row's P@0.5 expressions, built with their masks; PAPER_NOTES.md §3)."""
    from pixelllm.configs import get_config
    from pixelllm.tasks.referring.segmentation import build_refseg_model, evaluate_refseg, refseg_trainer

    t0 = time.perf_counter()
    cfg = get_config("refseg", smoke=smoke, overrides={
        "steps": steps, "seed": seed, "init_from": str(out / "refcoco"), "eval_samples": 0,
        "warmup_steps": max(1, steps // 10), "ckpt_interval": 10 ** 9, "keep_last": 1,   # the last step is saved
        "out_dir": str(out / "refseg"), **recipe.get("refseg", {})})
    trainer = refseg_trainer(cfg, build_refseg_model(cfg, tok), tok, progress=False)
    trainer.fit()
    m = evaluate_refseg(trainer.model, val, progress=False)["all"]
    return {"refseg_steps": cfg.steps, "refseg_ciou": m["cIoU"], "refseg_giou": m["gIoU"],
            "refseg_minutes": (time.perf_counter() - t0) / 60}


def run_one(recipe_name: str, seed: int, trace_steps: int, refer_steps: int, n_eval: int, smoke: bool,
            keep: bool, label: str = "", what: str = "", refseg_steps: int = 0) -> dict:
    import torch

    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.builder import build_model
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.tasks.captioning import run_training
    from pixelllm.data.refexp import refexp_datasets
    from pixelllm.tasks.referring.localization import evaluate_referring, referring_trainer
    from pixelllm.utils import run_dir

    recipe_what, recipe = RECIPES[recipe_name]
    out = run_dir(smoke) / "lab" / (label or recipe_name) / f"seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    row = {"recipe": label or recipe_name, "what": what or recipe_what, "overrides_of": recipe_name, "seed": seed, "trace_steps": trace_steps,
           "refer_steps": refer_steps, "n_eval": n_eval, "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if trace_steps:
        cfg = merged("ln_trace", recipe, {"steps": trace_steps, "seed": seed, "eval_interval": 0,
                                          "warmup_steps": max(1, trace_steps // 10),
                                          "ckpt_interval": trace_steps, "keep_last": 1,
                                          "out_dir": str(out / "ln_trace")}, smoke)
        trainer = run_training(cfg, eval_fn=None, resume=False, progress=False)
        paths = resolve_paths(cfg)
        tok = load_tokenizer(paths.tokenizer)
        row["trace_minutes"] = (time.perf_counter() - t0) / 60
        row.update(score_trace(trainer.model, cfg, paths, tok, n_eval))
        init = str(out / "ln_trace")
    else:
        init = "ln_trace"
    if refer_steps:
        t1 = time.perf_counter()
        cfg = merged("refcoco", recipe, {"steps": refer_steps, "seed": seed, "init_from": init,
                                         "warmup_steps": max(1, refer_steps // 8), "eval_samples": 0,
                                         "ckpt_interval": refer_steps, "keep_last": 1,
                                         "out_dir": str(out / "refcoco")}, smoke)
        paths = resolve_paths(cfg)
        tok = load_tokenizer(paths.tokenizer)
        trainer = referring_trainer(cfg, build_model(cfg, paths, tok, verbose=False), tok, progress=False,
                                    write=bool(refseg_steps))      # the mask adapter loads the checkpoint
        trainer.fit()
        row["refer_minutes"] = (time.perf_counter() - t1) / 60
        val = refexp_datasets(paths.data, tok, trainer.model.image_size, ("val",), prompt=cfg.prompts["refer"],
                              max_target_len=cfg.max_target_len, max_samples=n_eval,
                              return_masks=bool(refseg_steps))
        m = evaluate_referring(trainer.model, val, progress=False)
        row["refer_p05"] = m["val"]["P@0.5"]
        if refseg_steps:
            row.update(score_refseg(recipe, seed, refseg_steps, out, val, tok, smoke))
    row["minutes"] = (time.perf_counter() - t0) / 60
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


def fmt(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def render_table(rows: list[dict]) -> str:
    """Markdown: one line per (recipe, steps) with the mean over seeds and the per-seed values."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["trace_steps"], r["refer_steps"], r.get("refseg_steps", 0)), []).append(r)
    lines = ["| # | recipe | what | steps (trace / refer / adapter) | seeds | point_l1 (centre) | pointing acc. (own utterance) "
             "| pointing acc. (relative position) | generated pointing | CIDEr-D "
             "| refer P@0.5 | refer cIoU (gIoU) | minutes / seed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, ((name, ts, rs, ss), g) in enumerate(groups.items(), 1):
        def values(k):
            return [r.get(k) for r in g if r.get(k) is not None]

        def mean(k):
            vals = values(k)
            return sum(vals) / len(vals) if vals else None

        def cell(k):
            vals = values(k)
            if not vals:
                return "—"
            return fmt(mean(k)) + (" (" + " / ".join(fmt(v) for v in vals) + ")" if len(vals) > 1 else "")
        l1 = cell("point_l1") + (f" [{fmt(mean('centre_l1'))}]" if values("centre_l1") else "")
        mins = sum(r["minutes"] for r in g) / len(g)
        gen = cell("pointing_accuracy_generated")
        if gen != "—":
            gen += f"; {fmt(mean('pointing_accuracy_generated_existing'))} on existing objects"
            named = [r["n_phrases_existing"] / r["n_phrases"] for r in g if r.get("n_phrases")]
            if named:   # naming: the share of generated "colour shape" phrases that name an object of the image
                gen += f"; {100 * sum(named) / len(named):.0f} % of phrases name one"
        seg = cell("refseg_ciou") + (f" ({fmt(mean('refseg_giou'))})" if values("refseg_giou") else "")
        steps = f"{ts or 'record'} / {rs}" + (f" / {ss}" if ss else "")
        lines.append(f"| {i} | `{name}` | {g[0]['what']} | {steps} | {len(g)} | {l1} | "
                     f"{cell('pointing_accuracy')} | {cell('pointing_accuracy_relative_position')} | "
                     f"{gen} | {cell('CIDEr-D')} | {cell('refer_p05')} | {seg} | {mins:.1f} |")
    return "\n".join(lines)


def write_table() -> None:
    rows = [json.loads(x) for x in LOG.read_text().splitlines() if x.strip()] if LOG.is_file() else []
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{DOC}: missing the {BEGIN} / {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + BEGIN + "\n" + render_table(rows) + "\n" + END + tail)
    print(f"wrote {len(rows)} runs into {DOC}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", choices=sorted(RECIPES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--trace-steps", type=int, default=300)
    ap.add_argument("--refer-steps", type=int, default=200)
    ap.add_argument("--refseg-steps", type=int, default=0,
                    help="also train the mask adapter this many steps and score referring segmentation cIoU / gIoU")
    ap.add_argument("--n-eval", type=int, default=128, help="val narratives / expressions scored")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--smoke", action="store_true", help="SMOKE world and a few steps (a test of the lab)")
    ap.add_argument("--keep", action="store_true", help="keep the lab's checkpoints")
    ap.add_argument("--label", default="", help="record the runs under this name (a recipe's overrides on another "
                                                "run folder's stage 1, e.g. PIXELLLM_RUNS=... with other prerequisites)")
    ap.add_argument("--what", default="", help="the hypothesis text recorded with --label")
    ap.add_argument("--no-log", action="store_true", help="do not append to results/grounding_lab.jsonl")
    ap.add_argument("--table", action="store_true", help="render docs/GROUNDING_LAB.md's table and exit")
    args = ap.parse_args(argv)
    if args.table:
        write_table()
        return
    if args.recipe is None:
        ap.error("--recipe is required (or --table)")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for seed in args.seeds:
        row = run_one(args.recipe, seed, args.trace_steps, args.refer_steps, args.n_eval, args.smoke, args.keep,
                      label=args.label, what=args.what, refseg_steps=args.refseg_steps)
        print(json.dumps(row))
        if not args.no_log and not args.smoke:
            LOG.parent.mkdir(parents=True, exist_ok=True)
            with LOG.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
