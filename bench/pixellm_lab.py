"""PixelLM lab (docs/lab/pixellm.md): train one ``pixellm`` variant and score it on a small test subset.

    OMP_NUM_THREADS=1 python bench/pixellm_lab.py run --name pixellm_box --n 100 \\
        --pixellm "{'decoder': 'sam', 'dim': 128, 'out_size': 64, 'box_prompt': True}" init_from=refcoco
    OMP_NUM_THREADS=1 python bench/pixellm_lab.py sam_path --n 100

``run`` trains ``get_config("pixellm")`` (the recipe of record: 9,600 steps) with stage NAME, the ``--pixellm``
PixelLMConfig overrides merged over the recipe's own (``{'attn_weight': 0.0}`` turns its attention loss off)
and any ``key=value`` TrainConfig overrides (e.g. ``steps=1200``) (found again when made by the same config), then scores it with
``pixelllm.tasks.pixellm.evaluate_stage`` on the first N testA + N testB expressions and the first 2N
multi-target test questions. ``sam_path`` scores the run's ``refseg`` stage on the same subset. Each prints
one JSON line (appended to ``--log`` when given).
"""
from __future__ import annotations

import argparse
import ast
import json
import time

import torch


def summary(e: dict) -> dict:
    """The lab fields of an ``evaluate_stage`` / ``evaluate_sam_path`` result (single-target cIoU / gIoU, gIoU
    on 2–4 targets or None, gIoU per number of targets)."""
    multi = e["multi"]
    return {"ciou_single": e["single"]["all"]["cIoU"], "giou_single": e["single"]["all"]["gIoU"],
            "giou_multi_2_4": multi.get("2-4", {}).get("giou"),
            "giou_by_targets": {k: v["giou"] for k, v in multi["by_targets"].items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("run", "sam_path"))
    ap.add_argument("--name", default="pixellm_lab", help="stage name of the variant (its checkpoint folder)")
    ap.add_argument("--pixellm", default="{}", help="PixelLMConfig overrides, a Python dict literal")
    ap.add_argument("--n", type=int, default=100, help="expressions per test split (questions: 2N)")
    ap.add_argument("--log", default="", help="JSONL file the result line is appended to")
    ap.add_argument("overrides", nargs="*", help="TrainConfig key=value overrides")
    args = ap.parse_intermixed_args(argv)
    torch.set_num_threads(1)

    from pixelllm.configs import get_config
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.tasks import pixellm as P
    from pixelllm.tasks import referring as R

    ov = ast.literal_eval(args.pixellm)
    if not isinstance(ov, dict):
        raise SystemExit(f"--pixellm must be a dict literal, got {args.pixellm!r}")
    base = get_config("pixellm").pixellm_overrides         # the recipe's own (attn_weight); --pixellm adds to them
    cfg = get_config("pixellm", overrides=[f"stage={args.name}", f"pixellm_overrides={ {**base, **ov}!r}",
                                           *args.overrides])
    paths = resolve_paths(cfg)
    out = {"name": args.name if args.command == "run" else "sam_path", "pixellm_overrides": ov,
           "overrides": args.overrides, "n": args.n}
    t0 = time.time()
    if args.command == "run":
        P.train_pixellm(cfg, progress=False)
    tok = load_tokenizer(paths.tokenizer)
    sets = R.refexp_datasets(paths.data, tok, 128, splits=("testA", "testB"), return_masks=True)
    muse = P.muse_samples(cfg, paths.data, tok, 128, "test")
    folder = paths.run / "lab" / "pixellm"
    if args.command == "run":
        e = P.evaluate_stage(paths.out, tok, sets, muse, args.n, 2 * args.n, folder)
        out["train_minutes"] = e["train_minutes"]
    else:
        e = P.evaluate_sam_path(paths.run / "checkpoints" / "refseg", tok, sets, muse, args.n, 2 * args.n, folder)
    out.update(summary(e), minutes=round((time.time() - t0) / 60, 2))
    print(json.dumps(out))
    if args.log:
        with open(args.log, "a") as f:
            f.write(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    main()
