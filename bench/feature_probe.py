"""Where is an object's shape in the image features? A linear probe on the feature grid of each stage.

For every object of the first ``--images`` train images (and ``--val-images`` val images) of the synthetic
world, the feature vector of the grid cell holding the object's box centre is taken from V(I) = [frozen SAM
neck ; semantic ViT] as a stage's model computes it; a linear classifier is fitted on the train objects and
scored on the val objects, for the object's shape (6 classes, chance 1/6) and colour (6), on all channels and
on the SAM and semantic channels apart.

Sources (``--sources``):

* ``semantic``: the semantic ViT as pretrained (``<run>/semantic_tiny``), before any captioning stage;
* a stage name (``pretrain``, ``ln_trace``, ...): the image encoder of that stage's checkpoint
  (``<run>/checkpoints/<stage>``) — a stage that fine-tunes the semantic ViT changes it here.

Writes ``results/feature_probe.json`` {source: {shape: {all, sam, semantic}, colour: {...}, n_train, n_val}}.

    python bench/feature_probe.py [--sources semantic pretrain ln_trace] [--images 400] [--val-images 150]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def centre_cell_features(model, dataset, objects: dict, n_images: int) -> tuple:
    """(features N×C, shape labels N, colour labels N) of the objects of the first ``n_images`` images of an
    LN dataset: the grid cell of V(I) holding each object's box centre."""
    import torch

    from pixelllm.data import vocab as V
    from pixelllm.data.datasets import collate

    X, shapes, colours, seen = [], [], [], set()
    for k in range(len(dataset)):
        iid = str(dataset.narratives[k].image_id)
        if iid in seen:
            continue
        if len(seen) == n_images:
            break
        seen.add(iid)
        b = collate([dataset[k]])
        with torch.no_grad():
            grid = model.image_features(b["images"], b["image_sizes"])[0]          # C×g×g
        _, gh, gw = grid.shape
        h, w = b["image_sizes"][0].tolist()
        side = b["images"].shape[-1]
        for o in objects.get(iid, []):
            x0, y0, x1, y1 = o.box                                                  # normalised by w, h
            cx, cy = (x0 + x1) / 2 * w, (y0 + y1) / 2 * h
            i, j = min(int(cy / side * gh), gh - 1), min(int(cx / side * gw), gw - 1)
            X.append(grid[:, i, j])
            shapes.append(V.SHAPES.index(o.shape))
            colours.append(list(V.COLORS).index(o.color))
    return torch.stack(X), torch.tensor(shapes), torch.tensor(colours)


def linear_probe(xt, yt, xv, yv, classes: int, steps: int = 300, seed: int = 0) -> float:
    """Val accuracy of a multinomial logistic regression (standardised inputs, L2 1e-3, full-batch L-BFGS).
    Written with torch because scikit-learn is not a dependency of the repo; same model as its
    ``LogisticRegression``."""
    import torch

    torch.manual_seed(seed)
    mu, sd = xt.mean(0), xt.std(0) + 1e-5
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    lin = torch.nn.Linear(xt.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(xv).argmax(1) == yv).float().mean())


def main(argv: list[str] | None = None) -> dict:
    import torch
    from safetensors.torch import load_file

    from pixelllm.configs import get_config
    from pixelllm.data.pointing import load_object_boxes
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.builder import load_stage_model
    from pixelllm.engine.datasets import task_dataset
    from pixelllm.engine.paths import resolve_paths

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", nargs="+", default=["semantic", "pretrain", "ln_trace"])
    ap.add_argument("--images", type=int, default=400, help="train images whose objects fit the probe")
    ap.add_argument("--val-images", type=int, default=150, help="val images whose objects score it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "results" / "feature_probe.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = get_config("ln_trace")
    paths = resolve_paths(cfg)
    tok = load_tokenizer(paths.tokenizer)
    results: dict = {"images": args.images, "val_images": args.val_images}
    for source in args.sources:
        t0 = time.time()
        stage = "pretrain" if source == "semantic" else source
        model, _ = load_stage_model(paths.run / "checkpoints" / stage, tok)
        if source == "semantic":             # the pretrained ViT, before any captioning stage touched it
            model.image_encoder.semantic_encoder.load_state_dict(load_file(str(paths.semantic)))
        sam_dim = model.image_encoder.sam_dim
        split = {}
        for name, n in (("train", args.images), ("val", args.val_images)):
            ds = task_dataset("trace", name, cfg, paths, tok, model.image_size)
            objects = load_object_boxes(paths.data / "coco" / f"instances_{name}.json", paths.data / "scenes.json")
            split[name] = centre_cell_features(model, ds, objects, n)
        (xt, st, ct), (xv, sv, cv) = split["train"], split["val"]
        row = {"n_train": len(st), "n_val": len(sv)}
        for target, yt, yv in (("shape", st, sv), ("colour", ct, cv)):
            row[target] = {part: round(linear_probe(xt[:, sl], yt, xv[:, sl], yv, 6), 3)
                           for part, sl in (("all", slice(None)), ("sam", slice(0, sam_dim)),
                                            ("semantic", slice(sam_dim, None)))}
        row["seconds"] = round(time.time() - t0, 1)
        results[source] = row
        print(source, json.dumps(row))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
