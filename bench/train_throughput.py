"""Training throughput: samples/s of every training stage, where a stage-2 step spends its time, its model
FLOPs against the measured matmul peak, and the current stage-2 recipe vs a new one in the same process.

Writes ``results/throughput.json``:

* ``stages``: per stage (the three pretrainings and the six PixelLLM stages) samples/s of its config of
  record (engine levers as they are in the configs), after one warm-up epoch over ``--max-samples`` samples
  per task so the frozen-feature and decoded-image caches are warm, as in every epoch after the first;
* ``stage2``: the ``ln_trace`` step of :data:`CURRENT_RECIPE` (the engine before its speed levers) and of
  :data:`NEW_RECIPE`, timed in interleaved blocks (load drift of a shared machine cancels), each with a
  per-part time split (data, frozen encoders, trainable encoder, extractor, LM, heads, loss, optimizer,
  other = step − parts), model FLOPs per sample (``torch.utils.flop_counter.FlopCounterMode`` on one
  forward + loss + backward) and the fraction of ``matmul_peak_gflops`` (a big fp32 matmul timed in this run);
* ``stage2_levers``: each lever of :data:`LEVERS` alone on top of the current recipe (samples/s, speedup);
* ``stage2_speedup`` = new / current samples per CPU-second (``stage2_speedup_wall`` by wall clock).

Times are this process's CPU seconds (stable on a shared 2-core CPU; 1 torch thread by default), wall
clock beside. Ratios within one run are what count.

    python bench/train_throughput.py [--steps 4] [--blocks 3] [--max-samples 256] [--compile] [--quick]

``--quick`` (SMOKE run folder, a few steps, stage 2 + the tiny-T5 pretraining) is for the tests.
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from typing import Any, Callable

#: The stage-2 recipe as it was before the grounding recipe: the paper's MLP head read from the state that
#: predicts each word, the semantic ViT trained, targets cut at 64 tokens with the whole-caption alignment,
#: every image decoded at every step.
CURRENT_RECIPE: dict[str, Any] = {"overrides": {
    "cache_decoded": False, "max_target_len": 64, "ln_alignment": "full_caption", "warmup_steps": 60,
    "model_overrides": {"head": "mlp", "semantic_trainable": True, "point_state": "emit", "pointer_context": 0}}}

#: THE new stage-2 recipe, in one place: the ln_trace config of record (pointer head with its context layer
#: and the read state, semantic ViT frozen so the whole grid is cached, 128 target tokens with span targets,
#: decoded images cached). ``overrides``: ln_trace config fields
#: on top of it; ``freeze_image_encoder``: freeze the whole image encoder in the bench; ``compile``:
#: ``torch.compile`` of the model.
NEW_RECIPE: dict[str, Any] = {"overrides": {}}

#: Each lever alone on top of :data:`CURRENT_RECIPE` (one row each). LR retuned with the batch by the
#: square-root rule (AdamW): lr · sqrt(64 / 32).
LEVERS: dict[str, dict[str, Any]] = {
    "cache_decoded": {"overrides": {"cache_decoded": True}},
    "freeze_semantic_vit": {"overrides": {"model_overrides": {"semantic_trainable": False}}},
    "pointer_head": {"overrides": {"model_overrides": {"head": "pointer"}}},
    "max_target_len_128": {"overrides": {"max_target_len": 128, "ln_alignment": "official"}},
    "batch_64_lr_1.4e-3": {"overrides": {"batch_size": 64, "lr": 1.4e-3}},
    "num_queries_16": {"overrides": {"model_overrides": {"num_queries": 16}}},
    "new_recipe_num_queries_16": {"overrides": {"cache_decoded": True, "max_target_len": 128,
                                                "ln_alignment": "span",
                                                "model_overrides": {"head": "pointer", "semantic_trainable": False,
                                                                    "pointer_context": 1, "point_state": "read",
                                                                    "num_queries": 16}}},
    "group_by_length": {"overrides": {"group_by_length": True}},
    "torch_compile": {"compile": True},
}

STAGES = ("sam_tiny", "t5_tiny", "semantic_tiny", "pretrain", "ln_trace", "refcoco", "refseg", "loc_caption",
          "densecap")
QUICK_STAGES = ("t5_tiny", "ln_trace")


# ----------------------------------------------------------------------------------------------- clocks
def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) since ``t = _clock()``."""
    return time.perf_counter() - t[0], time.process_time() - t[1]


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 matmul peak of this process (its torch threads): 2·n³ FLOPs per n×n @ n×n product,
    best of ``repeats`` by CPU time (the least disturbed by other processes), in GFLOP/s."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b                                                                      # warm-up
    best = math.inf
    for _ in range(repeats):
        t = _clock()
        a @ b
        wall, cpu = _since(t)
        best = min(best, max(cpu / max(1, torch.get_num_threads()), 1e-9) if cpu > 0 else wall)
    return 2 * n ** 3 / best / 1e9


# ----------------------------------------------------------------------------------------------- trainers
def stage_trainer(name: str, smoke: bool, overrides: dict, recipe: dict | None = None):
    """The engine Trainer of stage ``name`` (its config of record + ``overrides``), writing nothing, built
    as the stage's own code builds it; ``recipe`` (stage 2 only) may freeze the image encoder and compile."""
    import torch

    from pixelllm.configs import get_config
    from pixelllm.data.datasets import collate
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.builder import build_model
    from pixelllm.engine.datasets import build_train_dataset
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.engine.trainer import Trainer
    from pixelllm.pretrain.prerequisites import ensure_prerequisites

    recipe = recipe or {}
    cfg = get_config(name, smoke=smoke)
    model_over = {**cfg.model_overrides, **overrides.get("model_overrides", {})} if hasattr(cfg, "model_overrides") else {}
    over = {**overrides, **({"model_overrides": model_over} if model_over else {})}
    cfg = get_config(name, smoke=smoke, overrides=over)
    if name in ("sam_tiny", "t5_tiny", "semantic_tiny"):
        from pixelllm.pretrain.prerequisites import ensure_data, ensure_tokenizer

        ensure_data(cfg, progress=False)
        paths = resolve_paths(cfg)
        if name == "sam_tiny":
            from pixelllm.pretrain.sam import sam_trainer
            return sam_trainer(cfg, paths.data, None, progress=False)
        if name == "semantic_tiny":
            from pixelllm.pretrain.semantic import semantic_trainer
            return semantic_trainer(cfg, paths.data, None, progress=False)
        from pixelllm.pretrain.t5 import t5_corpus, t5_trainer
        ensure_tokenizer(cfg, progress=False)
        return t5_trainer(cfg, t5_corpus(paths.data)[0], load_tokenizer(paths.tokenizer), (), None, progress=False)

    paths = ensure_prerequisites(cfg, progress=False)
    tok = load_tokenizer(paths.tokenizer)
    if name == "refseg":
        from pixelllm.tasks.referring.segmentation import build_refseg_model, refseg_trainer
        trainer = refseg_trainer(cfg, build_refseg_model(cfg, tok), tok, progress=False)
    elif name == "densecap":
        from pixelllm.tasks.densecap import build_densecap, densecap_collate, densecap_train_dataset
        captioner = build_densecap(cfg, tok, verbose=False)
        trainer = Trainer(captioner, cfg, densecap_train_dataset(cfg, tok, captioner.image_size), densecap_collate,
                          progress=False)
    elif name == "loc_caption":
        from pixelllm.tasks.region_caption import loc_caption_trainer
        trainer = loc_caption_trainer(cfg, build_model(cfg, paths, tok, verbose=False), tok, paths, False, False)
    elif name == "refcoco":
        from pixelllm.tasks.referring.localization import referring_trainer
        trainer = referring_trainer(cfg, build_model(cfg, paths, tok, verbose=False), tok, False, False)
    else:                                                                       # pretrain, ln_trace
        model = build_model(cfg, paths, tok, verbose=False)
        if recipe.get("freeze_image_encoder"):
            model.image_encoder.requires_grad_(False)
        trainer = Trainer(model, cfg, build_train_dataset(cfg, paths, tok, model.image_size), collate,
                          progress=False)
    trainer.out_dir = None                                                      # a benchmark writes nothing
    trainer.eval_fn = None
    if recipe.get("compile"):
        trainer.net = torch.compile(trainer.net)
    return trainer


def epoch_steps(trainer) -> int:
    """Optimizer steps of one epoch of the trainer's (capped) dataset."""
    return max(1, len(trainer.sampler.inner) // (trainer.local_batch * trainer.cfg.accum_steps))


def run_steps(trainer, n: int) -> tuple[float, float]:
    """(wall s, CPU s) of ``n`` more optimizer steps."""
    t = _clock()
    trainer.fit(until=trainer.step + n)
    return _since(t)


def rates(times: list[tuple[float, float]], steps: int, trainer) -> dict[str, float]:
    """Medians over timed blocks of ``steps`` steps → samples/s (per wall and per CPU second), step s."""
    samples = steps * trainer.cfg.batch_size * trainer.cfg.accum_steps
    wall = statistics.median(t[0] for t in times)
    cpu = statistics.median(t[1] for t in times)
    return {"samples_per_s": samples / cpu, "samples_per_wall_s": samples / wall, "step_s": cpu / steps,
            "step_wall_s": wall / steps, "batch_size": trainer.cfg.batch_size, "timed_steps": steps * len(times)}


# ------------------------------------------------------------------------------------------ stage-2 parts
def part_split(trainer, repeats: int = 3) -> dict[str, float]:
    """CPU seconds per part of one stage-2 step (median of ``repeats``), each part timed alone on the same
    batch with its input detached (so its backward stops at its border, as its share of the real step does):
    data (``batch_size`` × ``__getitem__`` + collate), frozen_encoders (the feature-cache look-up; the
    uncached frozen forward is ``frozen_encoders_miss``), trainable_encoder (semantic ViT fwd + bwd),
    extractor (grid resize/concat + prompt encoder + extractor fwd + bwd), lm (T5 encoder + decoder + logits
    fwd + bwd), heads (trace head fwd + bwd), loss (fwd + bwd), optimizer (clip + AdamW + zero_grad)."""
    import torch

    from pixelllm.engine.trainer import to_device
    from pixelllm.modeling.losses import count_targets

    model, cfg = trainer.model, trainer.cfg
    enc = model.image_encoder
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(trainer.dataset), generator=g)[: trainer.local_batch].tolist()
    batch = to_device(trainer.collate_fn([trainer.dataset[i] for i in idx]), trainer.device)
    n_tok, n_pt = count_targets(batch)
    if trainer.cache is not None:
        trainer.cache(batch)                                                    # warm for these images
    frozen = trainer.cache(batch) if trainer.cache is not None else model.frozen_image_features(
        batch["images"], batch["image_sizes"])

    def data():
        trainer.collate_fn([trainer.dataset[i] for i in idx])

    def frozen_lookup():
        if trainer.cache is not None:
            trainer.cache(batch)
        else:
            model.frozen_image_features(batch["images"], batch["image_sizes"])

    def frozen_miss():
        model.frozen_image_features(batch["images"], batch["image_sizes"])

    def trainable():
        if model.image_encoder_trainable:
            enc.semantic_features(batch["images"], batch["image_sizes"]).sum().backward()

    def sem_out():
        with torch.no_grad():
            return enc.semantic_features(batch["images"], batch["image_sizes"])

    sem = sem_out() if model.image_encoder_trainable else None

    def grid_of():
        if not model.image_encoder_trainable:
            return frozen.detach().requires_grad_(True)
        return enc.combine(frozen, sem.detach().requires_grad_(True))

    def extractor():
        model.prompt_tokens(grid_of(), batch["boxes"], batch["image_sizes"]).sum().backward()

    with torch.no_grad():
        grid = grid_of().detach()
        visual = model.prompt_tokens(grid, batch["boxes"], batch["image_sizes"])
        embeds, mask = model.encoder_inputs(visual, batch["prompt_ids"], batch["prompt_mask"])
        dec_in = model.language_model.shift_right(batch["target_ids"])
        logits, hidden = model.language_model(embeds, mask, dec_in)
        points = model.trace_head(hidden, model.frame_hw, grid)

    def lm():
        e, m = model.encoder_inputs(visual.detach().requires_grad_(True), batch["prompt_ids"], batch["prompt_mask"])
        lg, h = model.language_model(e, m, dec_in)
        (lg.sum() + h.sum()).backward()

    def heads():
        model.trace_head(hidden.detach().requires_grad_(True), model.frame_hw, grid).sum().backward()

    def loss():
        out = trainer.loss_fn(logits.detach().requires_grad_(True), points.detach().requires_grad_(True), batch,
                              lambda_point=cfg.lambda_point, label_smoothing=cfg.label_smoothing,
                              giou_weight=cfg.giou_weight, num_tokens=n_tok, num_points=n_pt)
        out["loss"].backward()

    def optimizer():
        torch.nn.utils.clip_grad_norm_(trainer.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    parts: dict[str, Callable] = {"data": data, "frozen_encoders": frozen_lookup, "trainable_encoder": trainable,
                                  "extractor": extractor, "lm": lm, "heads": heads, "loss": loss}
    out: dict[str, list[float]] = {k: [] for k in (*parts, "optimizer", "frozen_encoders_miss")}
    for _ in range(repeats + 1):                                                # the first round warms up
        for k, fn in parts.items():
            t = _clock()
            fn()
            out[k].append(_since(t)[1])
        t = _clock()
        optimizer()                                                             # on the grads of the parts
        out["optimizer"].append(_since(t)[1])
        t = _clock()
        frozen_miss()
        out["frozen_encoders_miss"].append(_since(t)[1])
    trainer.optimizer.zero_grad(set_to_none=True)
    return {k: statistics.median(v[1:]) for k, v in out.items()}


def flops_per_sample(trainer) -> float:
    """Model FLOPs of one training sample: ``FlopCounterMode`` over one forward + loss + backward of a batch
    (frozen features from the cache as in training), divided by the batch size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pixelllm.engine.trainer import forward_batch, to_device
    from pixelllm.modeling.losses import count_targets

    cfg = trainer.cfg
    batch = to_device(trainer.collate_fn([trainer.dataset[i] for i in range(trainer.local_batch)]), trainer.device)
    n_tok, n_pt = count_targets(batch)
    feats = trainer.cache(batch) if trainer.cache is not None else None
    counter = FlopCounterMode(display=False)
    with counter:
        logits, points, cells = forward_batch(trainer.model, batch, feats, trainer.forward_keys)
        out = trainer.loss_fn(logits, points, batch, lambda_point=cfg.lambda_point,
                              label_smoothing=cfg.label_smoothing, giou_weight=cfg.giou_weight,
                              cell_logits=cells, cell_weight=cfg.cell_weight, num_tokens=n_tok, num_points=n_pt)
        out["loss"].backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / trainer.local_batch


# ------------------------------------------------------------------------------------------------- main
def _recipe_overrides(recipe: dict, base: dict) -> dict:
    """``base`` config overrides with the recipe's on top (``model_overrides`` merged); a SMOKE ``base``
    (``batch_size`` 4) keeps its batch so that a few samples still make batches."""
    over = copy.deepcopy(base)
    for k, v in recipe.get("overrides", {}).items():
        over[k] = {**over.get(k, {}), **v} if k == "model_overrides" else v
    if base.get("smoke_batch"):
        over["batch_size"] = base["smoke_batch"]
    return {k: v for k, v in over.items() if k != "smoke_batch"}


def main(argv: list[str] | None = None) -> dict:
    import torch
    from tqdm.auto import tqdm

    from pixelllm.utils import results_dir, write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per block")
    ap.add_argument("--blocks", type=int, default=3, help="interleaved timed blocks per stage-2 recipe")
    ap.add_argument("--max-samples", type=int, default=256,
                    help="training samples per task (one warm-up epoch); enough for several batches per length group")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, set once (1: least sensitive to load)")
    ap.add_argument("--stages", default=None, help="comma-separated stages (default all; --quick: t5_tiny,ln_trace)")
    ap.add_argument("--no-levers", action="store_true", help="skip the one-lever rows")
    ap.add_argument("--compile", action="store_true",
                    help="also the torch.compile row (minutes of compilation per target length on a 2-core CPU)")
    ap.add_argument("--quick", action="store_true", help="SMOKE run folder, 2 steps, 1 block, no compile row")
    ap.add_argument("--out", default=None, help="results JSON (default results/throughput.json)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    smoke = args.quick
    steps, blocks = (2, 1) if args.quick else (args.steps, args.blocks)
    max_samples = 16 if args.quick else args.max_samples
    stages = args.stages.split(",") if args.stages else list(QUICK_STAGES if args.quick else STAGES)
    base = {"steps": 10 ** 6, "eval_interval": 0, "max_samples": max_samples, "log_interval": 10 ** 6,
            "num_threads": args.threads}
    if smoke:
        base["batch_size"] = 4
        stage2_base = {**base, "smoke_batch": 4}
    else:
        stage2_base = base

    peak = matmul_peak_gflops(512 if args.quick else 1024)
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "matmul_peak_gflops": peak, "quick": args.quick,
                              "clock": "samples_per_s / step_s: this process's CPU seconds (median of blocks); "
                                       "*_wall_*: wall clock", "max_samples_per_task": max_samples,
                              "current_recipe": CURRENT_RECIPE, "new_recipe": NEW_RECIPE, "stages": {}, "skipped": {}}

    # ---- every stage: its config of record, caches warm after one epoch
    for name in tqdm(stages, desc="stages"):
        if name == "ln_trace":
            continue                                                            # measured below, as "new"/"current"
        try:
            tr = stage_trainer(name, smoke, dict(base))
        except FileNotFoundError as e:                                          # e.g. refseg without refcoco
            result["skipped"][name] = str(e)
            continue
        run_steps(tr, epoch_steps(tr) + 1)
        result["stages"][name] = rates([run_steps(tr, steps) for _ in range(blocks)], steps, tr)
        del tr

    # ---- stage 2: current vs new, interleaved blocks
    if "ln_trace" in stages:
        trainers = {"current": stage_trainer("ln_trace", smoke, _recipe_overrides(CURRENT_RECIPE, stage2_base), CURRENT_RECIPE),
                    "new": stage_trainer("ln_trace", smoke, _recipe_overrides(NEW_RECIPE, stage2_base), NEW_RECIPE)}
        times: dict[str, list] = {k: [] for k in trainers}
        steps_of = {k: max(1, round(steps * 32 / tr.cfg.batch_size)) if not smoke else steps
                    for k, tr in trainers.items()}                              # ~ the same samples per block
        for k, tr in trainers.items():
            run_steps(tr, epoch_steps(tr) + 1)
        for _ in tqdm(range(blocks), desc="stage 2 current / new"):
            for k, tr in trainers.items():
                times[k].append(run_steps(tr, steps_of[k]))
        stage2 = {}
        for k, tr in trainers.items():
            row = rates(times[k], steps_of[k], tr)
            row["flops_per_sample"] = flops_per_sample(tr)
            row["peak_fraction"] = row["flops_per_sample"] * row["samples_per_s"] / (peak * 1e9)
            parts = part_split(tr, repeats=1 if smoke else 3)
            miss = parts.pop("frozen_encoders_miss")
            named = sum(parts.values())
            parts["other"] = max(0.0, row["step_s"] - named)
            row["parts_s"] = parts
            row["frozen_encoders_miss_s"] = miss
            row["cache_decoded"] = tr.cfg.cache_decoded
            row["image_encoder_trainable"] = tr.model.image_encoder_trainable
            stage2[k] = row
        result["stage2"] = stage2
        result["stages"]["ln_trace"] = stage2["current"]
        result["stage2_speedup"] = stage2["new"]["samples_per_s"] / stage2["current"]["samples_per_s"]
        result["stage2_speedup_wall"] = stage2["new"]["samples_per_wall_s"] / stage2["current"]["samples_per_wall_s"]
        del trainers

        # ---- one lever at a time on top of the current recipe (each against its own current block)
        levers = {} if args.no_levers else {k: v for k, v in LEVERS.items()
                                            if not (v.get("compile") and (smoke or not args.compile))}
        rows = {}
        cur = stage_trainer("ln_trace", smoke, _recipe_overrides(CURRENT_RECIPE, stage2_base), CURRENT_RECIPE)
        run_steps(cur, epoch_steps(cur) + 1)
        for name, lever in tqdm(levers.items(), desc="stage-2 levers"):
            recipe = {**CURRENT_RECIPE, **lever, "overrides": _recipe_overrides(lever, CURRENT_RECIPE.get("overrides", {}))}
            t0 = _clock()
            tr = stage_trainer("ln_trace", smoke, _recipe_overrides(recipe, stage2_base), recipe)
            n = max(1, round(steps * 32 / tr.cfg.batch_size)) if not smoke else steps
            run_steps(tr, epoch_steps(tr) + 1)
            warm_wall = _since(t0)[0]
            lt, ct = [], []
            for _ in range(blocks):
                lt.append(run_steps(tr, n))
                ct.append(run_steps(cur, steps_of["current"]))
            row, ref = rates(lt, n, tr), rates(ct, steps_of["current"], cur)
            row["speedup"] = row["samples_per_s"] / ref["samples_per_s"]
            row["speedup_wall"] = row["samples_per_wall_s"] / ref["samples_per_wall_s"]
            row["build_and_warmup_wall_s"] = warm_wall
            row["recipe"] = lever
            rows[name] = row
            del tr
        result["stage2_levers"] = rows

    out = args.out or results_dir(smoke) / "throughput.json"
    write_json(out, result)
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()
           if k in ("stage2_speedup", "stage2_speedup_wall", "matmul_peak_gflops")})
    return result


if __name__ == "__main__":
    main()
