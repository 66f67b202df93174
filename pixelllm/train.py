"""Make any artifact of record from its config: ``python -m pixelllm.train --config NAME [--smoke] [k=v ...]``.

NAME is one of :data:`pixelllm.configs.CONFIGS`: the prerequisites (``data``, ``tokenizer``, ``sam_tiny``,
``t5_tiny``, ``semantic_tiny``) and the stages (``pretrain``, ``ln_trace``, ``refcoco``, ``refseg``,
``loc_caption``, ``densecap``, ``pixellm``, and ``own_data``: stage 2 continued on a folder converted by
``python -m data_prep.convert``, notebook 11). Each goes to the same place, from the same numbers, as the notebook that
makes it (notebooks 01–07, 09); what it needs first — the prerequisites and the stages named in its
``init_from`` — is found, or made from their own configs of record. A finished artifact whose stored
config matches is reused; a stage's checkpoint folder is resumed.

``--config pixellm --ablations [--jobs 2]`` makes notebook 09's whole plan: the PixelLM recipe of record and
its ablation arms at two seeds (``make reproduce`` runs it before notebook 09, which then only evaluates).

Data parallel on N processes (gloo on CPU, nccl on GPU; rank 0 logs and checkpoints) for the
captioning stages::

    torchrun --nproc_per_node 2 -m pixelllm.train --config pretrain --smoke

Everything that can be checked before a prerequisite trains is checked first — the config name, the
preset, every override (parsed and type-checked), the ranges of the numbers (``steps``, ``batch_size``,
``accum_steps`` ≥ 1, ``max_samples`` ≥ 0 where 0 = all, task weights ≥ 0, a finite ``lr`` > 0, ...; see
:meth:`~pixelllm.configs.TrainConfig.validate`) — and a bad one ends with one ``error:`` line and exit
status 2, as argparse does. So do the faults a run meets later that a user must act on: a checkpoint
folder of another config with ``--strict``, a folder locked by another run, an unusable checkpoint, a
missing training image, a non-finite loss (docs/BAD_INPUT.md).

This module is the command line only: nothing in the package imports it.
"""
from __future__ import annotations

import argparse
import os
import sys

from pixelllm.configs import CONFIGS, PREREQUISITES, get_config
from pixelllm.configs.base import apply_overrides

#: which function makes each stage (module:function, each taking the config; prerequisites are separate)
STAGE_RUNNERS = {
    "pretrain": "pixelllm.tasks.captioning:run_training",
    "ln_trace": "pixelllm.tasks.captioning:run_training",
    "refcoco": "pixelllm.tasks.referring:finetune_referring",
    "refseg": "pixelllm.tasks.referring:train_mask_adapter",
    "loc_caption": "pixelllm.tasks.region_caption:train_loc_caption",
    "densecap": "pixelllm.tasks.densecap:run_densecap_training",
    "own_data": "pixelllm.tasks.captioning:run_training",
    "pixellm": "pixelllm.tasks.pixellm:train_pixellm",
}


def _runner(name: str):
    import importlib

    module, fn = STAGE_RUNNERS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def ensure_init_stages(cfg, progress: bool = True) -> None:
    """Make the registry stages named in ``cfg.init_from`` that have no checkpoint yet (recursively), each
    from its config of record in the same SMOKE mode and run folder."""
    from pixelllm.engine.builder import resolve_inits
    from pixelllm.engine.paths import resolve_paths

    paths = resolve_paths(cfg)
    for name in [x.strip() for x in (getattr(cfg, "init_from", "") or "").split(",") if x.strip()]:
        if name in STAGE_RUNNERS and not resolve_inits(apply_overrides(cfg, {"init_from": name}), paths):
            dep = get_config(name, smoke=cfg.smoke)
            if cfg.run_dir:
                dep = apply_overrides(dep, {"run_dir": cfg.run_dir})
            print(f"[{cfg.stage}] init_from stage {name!r} has no checkpoint: making it first")
            make(name, dep, progress=progress)


def make(name: str, cfg, resume: bool = True, progress: bool = True, eval_hook: bool = True):
    """Make artifact ``name`` from ``cfg`` (prerequisites found or made first); returns what the runner returns."""
    from pixelllm.pretrain import prerequisites as pre

    if name in PREREQUISITES:
        if name != "data":                    # every other prerequisite is made from the world's texts/images
            pre.ensure_data(cfg, progress)
        if name not in ("data", "tokenizer"):
            pre.ensure_tokenizer(cfg, progress)
        fn = {"data": pre.ensure_data, "tokenizer": pre.ensure_tokenizer, "sam_tiny": pre.ensure_sam,
              "t5_tiny": pre.ensure_t5, "semantic_tiny": pre.ensure_semantic}[name]
        return fn(cfg, progress)
    if name == "own_data" and not cfg.data_dir:
        raise ValueError("own_data needs data_dir=<the folder written by python -m data_prep.convert>")
    # the init stages first: each makes the run's prerequisites from the run's world, before this config's
    # own data_dir (e.g. own_data's converted folder) is asked for them
    ensure_init_stages(cfg, progress=progress)
    pre.ensure_prerequisites(cfg, progress=progress)
    if name in ("pretrain", "ln_trace", "own_data"):
        trainer = _runner(name)(cfg, eval_fn="default" if eval_hook else None, resume=resume, progress=progress)
    else:
        trainer = _runner(name)(cfg, progress=progress, resume=resume)
    record_stage_config(trainer, cfg)
    return trainer


def record_stage_config(trainer, cfg) -> None:
    """Once the run of stage ``cfg`` has finished (:meth:`~pixelllm.engine.trainer.Trainer.already_complete`), write the
    config sidecar that :func:`pixelllm.utils.found_or_compute` reads, as a notebook making the stage would
    (rank 0 only): a notebook then reuses a stage made here, instead of calling it unknown (and refusing it
    under ``PIXELLLM_STRICT``)."""
    from pixelllm.engine.builder import stage_config
    from pixelllm.utils import config_sidecar, write_json

    if trainer.dist.is_main and trainer.already_complete():
        write_json(config_sidecar(trainer.out_dir / "final.json"), stage_config(cfg))


def check_up_front(name: str, cfg) -> None:
    """What can be checked before anything runs: the preset of a stage and the config's ranges (one
    ``ValueError`` listing every problem)."""
    if name not in PREREQUISITES and hasattr(cfg, "preset"):
        from pixelllm.modeling.build import PRESETS

        if cfg.preset not in PRESETS:
            raise ValueError(f"unknown preset {cfg.preset!r}; available: {', '.join(PRESETS)}")
    if hasattr(cfg, "validate"):
        cfg.validate()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pixelllm.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, choices=CONFIGS)
    ap.add_argument("--preset", default=None, help="build_pixelllm preset (tiny | small | paper)")
    ap.add_argument("--smoke", action="store_true", help="the config's SMOKE variant (runs/smoke)")
    ap.add_argument("--no-resume", action="store_true",
                    help="start from step 0; a run already in out_dir is moved to out_dir/superseded/ first")
    ap.add_argument("--strict", action="store_true",
                    help="refuse (exit 2) a checkpoint folder or artifact made by another config instead of "
                         "setting it aside and retraining (same as PIXELLLM_STRICT=1)")
    ap.add_argument("--no-eval", action="store_true", help="skip the eval hook (captioning stages)")
    ap.add_argument("--ablations", action="store_true",
                    help="--config pixellm only: notebook 09's whole plan, the recipe of record and its ablation "
                         "arms (pixelllm.tasks.pixellm.pixellm_plan), each found or trained; overrides not allowed")
    ap.add_argument("--jobs", type=int, default=1, help="--ablations: stages trained at a time, one process each")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value (Python literals)")
    args = ap.parse_args(argv)

    def error(msg: str) -> int:
        print(f"{ap.prog}: error: {msg}", file=sys.stderr)
        return 2

    if args.ablations and (args.config != "pixellm" or args.overrides or args.preset):
        return error("--ablations goes with --config pixellm alone (each stage of the plan has its config of record)")
    if args.jobs < 1:
        return error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        cfg = get_config(args.config, smoke=args.smoke, preset=args.preset, overrides=args.overrides)
        check_up_front(args.config, cfg)
    except (KeyError, ValueError, TypeError) as e:
        return error(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    if args.print_config:
        print(cfg.help() if hasattr(cfg, "help") else cfg)
        return 0
    if args.strict:
        os.environ["PIXELLLM_STRICT"] = "1"
    from pixelllm.data.errors import DataFormatError
    from pixelllm.engine.checkpoint import CheckpointError, RunInUseError
    from pixelllm.engine.trainer import NonFiniteLossError
    from pixelllm.utils import ConfigMismatchError

    user_faults = (ConfigMismatchError, RunInUseError, CheckpointError, DataFormatError, FileNotFoundError)
    if args.config in PREREQUISITES:
        try:
            print(f"done: {make(args.config, cfg)}")
        except user_faults as e:
            return error(str(e))
        return 0
    from pixelllm.engine import distributed

    if args.ablations:
        from pixelllm.tasks.pixellm import ensure_pixellm_stages

        try:
            stages = ensure_pixellm_stages(args.smoke, jobs=args.jobs)
        except user_faults as e:
            return error(str(e))
        print(f"done: {', '.join(stages)} in {next(iter(stages.values())).parent}")
        return 0
    info = distributed.init_distributed(cfg.device)
    try:
        out = make(args.config, cfg, resume=not args.no_resume, eval_hook=not args.no_eval)
        if info.is_main:
            from pixelllm.engine.paths import resolve_paths

            step = getattr(out, "step", None)
            print(f"done: {args.config}" + (f", step {step}" if step is not None else "")
                  + f", checkpoints in {resolve_paths(cfg).out}")
    except NonFiniteLossError as e:
        return error(f"training stopped: {e}")
    except user_faults as e:
        return error(str(e))
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
