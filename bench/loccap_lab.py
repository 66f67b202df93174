"""Location-conditioned captioning lab: does the box prompt decide what is captioned?

Fine-tunes the ``loc_caption`` stage from the run's ``ln_trace`` checkpoint for a fixed number of steps with
``key=value`` config overrides and a seed, then captions the first ``--n`` regions of the VG test split and
reports ``region_attribute_accuracy`` (the generated phrase names the prompted object's colour and shape;
:mod:`pixelllm.eval.region_attributes`), its chance baselines and CIDEr-D. One JSON line per run is appended
to ``--log``. The whole image encoder is frozen in this stage, so its feature grid is computed once per image
and kept in ``<run>/lab/grid_features.pt`` for every later run.

    OMP_NUM_THREADS=1 python bench/loccap_lab.py run --name plain --seed 0 --steps 300
    OMP_NUM_THREADS=1 python bench/loccap_lab.py run --name roi --seed 0 --steps 300 "model_overrides={'roi_tokens': 2}"
    OMP_NUM_THREADS=1 python bench/loccap_lab.py eval --checkpoint runs/full/checkpoints/loc_caption
    OMP_NUM_THREADS=1 python bench/loccap_lab.py probe      # linear probe of colour / shape on ROI-pooled grid features

Each run: about 2-4 minutes on a 2-core CPU (300 steps of batch 32, 300 test regions).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def grid_features(model, run: Path, tok, splits=("train", "test")) -> dict[str, torch.Tensor]:
    """{str(image_id): C×h×w} frozen feature grid of every image of the VG ``splits`` (cached on disk).
    ``model`` must have its whole image encoder frozen (:func:`freeze_for_loc_caption`)."""
    from pixelllm.tasks import region_caption as rc

    if model.image_encoder_trainable:
        raise ValueError("grid_features: freeze the image encoder first (freeze_for_loc_caption)")

    path = run / "lab" / "grid_features.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    store: dict[str, torch.Tensor] = {}
    for split in splits:
        ds = rc.region_caption_dataset(run / "data", "vg", split, tok, model.image_size)
        seen = {}
        for i, (rec, *_rest) in enumerate(ds.items):
            seen.setdefault(str(rec["image_id"]), i)
        idx = list(seen.values())
        with torch.no_grad():
            for s in range(0, len(idx), 64):
                xs = [ds[i] for i in idx[s:s + 64]]
                f = model.frozen_image_features(torch.stack([x["images"] for x in xs]),
                                                torch.stack([x["image_sizes"] for x in xs]))
                for x, g in zip(xs, f):
                    store[str(x["image_ids"])] = g
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(store, path)
    return store


def evaluate(model, run: Path, tok, n: int, cider: bool = True) -> dict:
    """region_attribute_accuracy (+ chance, CIDEr-D) of ``model`` on the first ``n`` VG test regions."""
    from pixelllm.tasks import region_caption as rc

    ds = rc.region_caption_dataset(run / "data", "vg", "test", tok, model.image_size)
    res = rc.caption_regions(model, ds, tok, batch_size=64, max_new_tokens=16, limit=n, progress=False)
    out = rc.score_region_attributes(res, rc.scene_objects(run / "data" / "scenes.json"))
    if cider:
        from pixelllm.eval.caption import caption_metrics

        m = caption_metrics({r["key"]: r["text"] for r in res}, {r["key"]: r["references"] for r in res},
                            metrics=("CIDEr-D",))
        out["CIDEr-D"] = m["CIDEr-D"]
    out["examples"] = [(r["text"], r["references"][0]) for r in res[:4]]
    return out


def run_experiment(args) -> dict:
    from pixelllm.configs import get_config
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.builder import build_model
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.tasks import region_caption as rc

    over = list(args.overrides) + [f"seed={args.seed}", f"steps={args.steps}", "log_interval=50",
                                   f"warmup_steps={min(50, args.steps // 10)}"]
    cfg = get_config("loc_caption", overrides=over)
    paths = resolve_paths(cfg)
    tok = load_tokenizer(paths.tokenizer)
    model = build_model(cfg, paths, tok, verbose=False)
    t0 = time.time()
    trainer = rc.loc_caption_trainer(cfg, model, tok, paths, progress=False, write=False)
    if trainer.cache is not None:
        trainer.cache.store.update(grid_features(model, paths.run, tok))
    trainer.fit()
    minutes_train = (time.time() - t0) / 60
    ce = sum(r["ce"] for r in trainer.history[-20:]) / max(1, len(trainer.history[-20:]))
    ev = evaluate(trainer.model, paths.run, tok, args.n)
    return {"name": args.name, "seed": args.seed, "steps": args.steps, "overrides": args.overrides,
            "train_ce_last20": ce, **ev, "minutes": (time.time() - t0) / 60, "train_minutes": minutes_train}


def probe(args) -> dict:
    """Linear probe: are colour and shape decodable from the frozen grid at the box? ROIAlign (2×2, averaged
    to one vector, and 2×2 concatenated) of the ln_trace grid at each VG region box → logistic regression on
    train regions, accuracy on test regions."""
    from torchvision.ops import roi_align

    from pixelllm.configs import get_config
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.builder import build_model
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.tasks import region_caption as rc

    cfg = get_config("loc_caption")
    paths = resolve_paths(cfg)
    tok = load_tokenizer(paths.tokenizer)
    model = rc.freeze_for_loc_caption(build_model(cfg, paths, tok, verbose=False).eval(), False)
    feats = grid_features(model, paths.run, tok)
    objects = rc.scene_objects(paths.run / "data" / "scenes.json")
    S = model.image_size
    out = {}
    data = {}
    for split in ("train", "test"):
        ds = rc.region_caption_dataset(paths.run / "data", "vg", split, tok, S)
        items = rc.region_items(ds)
        tg = rc.region_attribute_targets(items, objects)
        rows = [(it, t) for it, t in zip(items, tg) if t is not None]
        g = torch.stack([feats[str(it["image_id"])] for it, _ in rows])
        boxes = torch.stack([ds[it["index"]]["boxes"] for it, _ in rows]).float()
        scale = g.shape[-1] / S
        rois = torch.cat([torch.arange(len(rows)).float()[:, None], boxes], 1)
        r = roi_align(g, rois, output_size=2, spatial_scale=scale, sampling_ratio=2, aligned=True)
        data[split] = (r, [t for _, t in rows])
    from pixelllm.data.vocab import COLORS, SHAPES

    for kind in ("mean", "2x2"):
        xs = {k: (v[0].mean((2, 3)) if kind == "mean" else v[0].flatten(1)) for k, v in data.items()}
        mu, sd = xs["train"].mean(0), xs["train"].std(0) + 1e-6
        for attr, names, j in (("colour", list(COLORS), 0), ("shape", list(SHAPES), 1)):
            ys = {k: torch.tensor([names.index(t[j]) for t in v[1]]) for k, v in data.items()}
            lin = torch.nn.Linear(xs["train"].shape[1], len(names))
            opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-4)
            xt = (xs["train"] - mu) / sd
            for _ in range(300):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(lin(xt), ys["train"]).backward()
                opt.step()
            with torch.no_grad():
                acc = float((lin((xs["test"] - mu) / sd).argmax(1) == ys["test"]).float().mean())
            out[f"{attr}_{kind}"] = acc
    out["num_train"], out["num_test"] = len(data["train"][1]), len(data["test"][1])
    out["grid"] = list(next(iter(feats.values())).shape)
    return out


def main(argv=None) -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "eval", "probe"])
    ap.add_argument("overrides", nargs="*", help="key=value config overrides (configs/loc_caption.py)")
    ap.add_argument("--name", default="run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n", type=int, default=300, help="VG test regions evaluated")
    ap.add_argument("--checkpoint", default="", help="eval: a stage checkpoint (file or folder)")
    ap.add_argument("--log", default="", help="append the result as one JSON line here")
    args = ap.parse_intermixed_args(argv)
    if args.command == "run":
        res = run_experiment(args)
    elif args.command == "eval":
        from pixelllm.data.tokenizer import load_tokenizer
        from pixelllm.engine.builder import load_stage_model
        from pixelllm.engine.paths import resolve_paths

        from pixelllm.configs import get_config

        paths = resolve_paths(get_config("loc_caption"))
        tok = load_tokenizer(paths.tokenizer)
        t0 = time.time()
        model, _ = load_stage_model(args.checkpoint, tok)
        res = {"name": args.name, "checkpoint": args.checkpoint, **evaluate(model, paths.run, tok, args.n),
               "minutes": (time.time() - t0) / 60}
    else:
        res = {"name": "probe", **probe(args)}
    line = json.dumps(res)
    print(line)
    if args.log:
        with open(args.log, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
