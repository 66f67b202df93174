"""Make any artifact of record from its config: ``python -m pixelllm.train --config NAME [--smoke] [k=v ...]``.

NAME is one of :data:`pixelllm.configs.CONFIGS`: the prerequisites (``data``, ``tokenizer``, ``sam_tiny``,
``t5_tiny``, ``semantic_tiny``) and the stages (``pretrain``, ``ln_trace``, ``refcoco``, ``refseg``,
``loc_caption``, ``densecap``). Each goes to the same place, from the same numbers, as the notebook that
makes it (notebooks 01–07); what it needs first — the prerequisites and the stages named in its
``init_from`` — is found, or made from their own configs of record. A finished artifact whose stored
config matches is reused; a stage's checkpoint folder is resumed.

Data parallel on N processes (gloo on CPU, nccl on GPU; rank 0 logs and checkpoints) for the
captioning stages::

    torchrun --nproc_per_node 2 -m pixelllm.train --config pretrain --smoke

This module is the command line only: nothing in the package imports it.
"""
from __future__ import annotations

import argparse
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
    pre.ensure_prerequisites(cfg, progress=progress)
    ensure_init_stages(cfg, progress=progress)
    if name in ("pretrain", "ln_trace"):
        return _runner(name)(cfg, eval_fn="default" if eval_hook else None, resume=resume, progress=progress)
    return _runner(name)(cfg, progress=progress, resume=resume)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, choices=CONFIGS)
    ap.add_argument("--preset", default=None, help="build_pixelllm preset (tiny | small | paper)")
    ap.add_argument("--smoke", action="store_true", help="the config's SMOKE variant (runs/smoke)")
    ap.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in out_dir")
    ap.add_argument("--no-eval", action="store_true", help="skip the eval hook (captioning stages)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value (Python literals)")
    args = ap.parse_args(argv)
    cfg = get_config(args.config, smoke=args.smoke, preset=args.preset, overrides=args.overrides)
    if args.print_config:
        print(cfg.help() if hasattr(cfg, "help") else cfg)
        return 0
    if args.config in PREREQUISITES:
        print(f"done: {make(args.config, cfg)}")
        return 0
    from pixelllm.engine import distributed
    from pixelllm.engine.trainer import NonFiniteLossError

    info = distributed.init_distributed(cfg.device)
    try:
        out = make(args.config, cfg, resume=not args.no_resume, eval_hook=not args.no_eval)
        if info.is_main:
            from pixelllm.engine.paths import resolve_paths

            step = getattr(out, "step", None)
            print(f"done: {args.config}" + (f", step {step}" if step is not None else "")
                  + f", checkpoints in {resolve_paths(cfg).out}")
    except NonFiniteLossError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
