"""Running the ablation: one arm and seed end to end (:func:`run_arm`), its result cached as
``<run>/ablations/<arm>/<seed>.json`` (:func:`arm_result`: found with the same config → load, else run),
and every (arm, seed) of notebook 08 (:func:`run_ablations`)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from pixelllm.configs.ablations import ARMS, AblationConfig, get_arm_config
from pixelllm.tasks.ablations.arms import (arm_paths, arm_trainer, build_arm_model, ensure_large_t5, ensure_stage1,
                                           feature_store_key, shared_feature_store)
from pixelllm.tasks.ablations.evaluation import downstream_loc_caption, downstream_referring, evaluate_stage2


def run_arm(cfg: AblationConfig, meteor=None, progress: bool = False) -> dict:
    """Train and evaluate one arm and seed (prerequisites and the stage-1 checkpoint found or made):
    :func:`~pixelllm.tasks.ablations.arms.build_arm_model`, ``cfg.steps`` steps of
    :func:`~pixelllm.tasks.ablations.arms.arm_trainer`, then the evaluation of
    :mod:`pixelllm.tasks.ablations.evaluation` (with the downstream fine-tunes when ``cfg.downstream``).
    Returns ``{"arm", "seed", "config", "metrics": {name: float}, "init", "train": {"steps", "last",
    "seconds" (the stage-2 optimizer steps only)}, "seconds" (everything, prerequisites included)}``."""
    from pixelllm.data.tokenizer import load_tokenizer

    t0 = time.time()
    stage1 = ensure_stage1(cfg, progress)
    paths = arm_paths(cfg)
    if cfg.lm_size == "large":
        ensure_large_t5(cfg, paths, progress)
    tok = load_tokenizer(paths.tokenizer)
    model, init = build_arm_model(cfg, paths, tok, stage1)
    store = shared_feature_store(feature_store_key(model, paths, stage1))
    trainer = arm_trainer(cfg, model, paths, tok, store, progress)
    t_fit = time.time()
    trainer.fit()
    t_train = time.time() - t_fit
    model.eval()
    metrics = evaluate_stage2(model, cfg, paths, tok, meteor)
    if cfg.downstream:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        metrics.update(downstream_referring(state, cfg, paths, tok, store, progress))
        metrics.update(downstream_loc_caption(state, cfg, paths, tok, store, meteor, progress))
    last = trainer.history[-1] if trainer.history else {}
    return {"arm": cfg.arm, "seed": cfg.seed, "config": jsonable(cfg.to_dict()), "metrics": metrics,
            "init": {"from": init["from"], "loaded": init["loaded"], "skipped": init["skipped"]},
            "train": {"steps": trainer.step, "last": {k: v for k, v in last.items() if isinstance(v, (int, float))},
                      "seconds": round(t_train, 1)},
            "seconds": round(time.time() - t0, 1)}


def jsonable(obj: Any) -> Any:
    """JSON round trip (tuples → lists) so stored and requested configs compare equal."""
    return json.loads(json.dumps(obj))


def result_path(cfg: AblationConfig) -> Path:
    """``<run>/ablations/<arm>/<seed>.json``."""
    from pixelllm.engine.paths import resolve_paths

    return resolve_paths(cfg).run / "ablations" / cfg.arm / f"{cfg.seed}.json"


def arm_result(cfg: AblationConfig, compute: Callable[[AblationConfig], dict] | None = None,
               force: bool = False, **kw) -> dict:
    """Found → load, else run: the result JSON of one arm and seed. A stored result whose config differs
    from ``cfg`` (e.g. other step counts) is recomputed, not silently reused. ``compute`` defaults to
    :func:`run_arm` (``kw`` are passed to it)."""
    from pixelllm.utils import found_or_compute, write_json

    path = result_path(cfg)
    want = jsonable(cfg.to_dict())
    if path.is_file() and not force:
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg}); delete it to recompute") from None
        if stored.get("config") == want:
            return stored
        have = stored.get("config", {})
        diff = sorted(k for k in set(want) | set(have) if have.get(k) != want.get(k))
        print(f"[ablations] {path}: stored config differs in {diff}; recomputing")
        force = True
    compute = compute or run_arm
    found_or_compute(path, lambda: write_json(path, compute(cfg, **kw)), force=force)
    return json.loads(path.read_text())


def run_ablations(arms: Iterable[str] | None = None, seeds: Sequence[int] = (0, 1), smoke: bool = False,
                  overrides: Mapping[str, Any] | None = None, seeds_per_arm: Mapping[str, Sequence[int]] | None = None,
                  progress: bool = True, compute: Callable | None = None) -> dict[str, list[dict]]:
    """Every (arm, seed) through :func:`arm_result` with a tqdm bar; one METEOR process serves them all.
    ``overrides`` apply to every arm alike (deliberate changes to the config of record); ``seeds_per_arm``
    replaces ``seeds`` for some arms. Returns ``{arm: [result per seed]}``."""
    from tqdm.auto import tqdm

    arms = list(arms or ARMS)
    jobs = [(a, s) for a in arms for s in (seeds_per_arm or {}).get(a, seeds)]
    cfgs = [get_arm_config(a, smoke=smoke, seed=s, overrides=dict(overrides or {})) for a, s in jobs]
    out: dict[str, list[dict]] = {a: [] for a in arms}
    meteor = None
    try:
        bar = tqdm(cfgs, desc="ablation arms", disable=not progress)
        for cfg in bar:
            bar.set_postfix(arm=cfg.arm, seed=cfg.seed)
            if compute is None and meteor is None and not result_path(cfg).is_file():
                from pixelllm.eval.caption import Meteor
                meteor = Meteor()
            kw = {} if compute is not None else {"meteor": meteor}
            out[cfg.arm].append(arm_result(cfg, compute=compute, **kw))
    finally:
        if meteor is not None:
            meteor.close()
    return out
