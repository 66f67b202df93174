"""How much does the trained captioner read the image? Teacher-forced caption CE on test images with
(a) the real images, (b) blank (all-zero) images, (c) the images shuffled across the batch.

If (a) ≈ (c) the language model has learned the caption prior and ignores what is in *this* image — the
diagnosis behind the missed grounding targets in README.md. The CE is also reported on the colour and shape
words alone (the words only the image can tell; chance = ln 6 = 1.79 for both). Writes
``results/visual_reliance.json``.

    python bench/visual_reliance.py [--stage pretrain|ln_trace] [--n 64]
"""
from __future__ import annotations

import argparse

import torch


def word_ids(tokenizer, words) -> set[int]:
    """Ids of the words that are single tokens (with the word-start marker, as inside a caption)."""
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    return {i[0] for i in ids if len(i) == 1}


def caption_ce(model, batch, images: torch.Tensor, classes: dict[str, set[int]] | None = None) -> dict[str, float]:
    """Mean token CE (no smoothing) of ``batch``'s targets given ``images`` (B×3×S×S in [0, 1]):
    ``{"all": ..., <class>: CE over the target tokens whose id is in classes[<class>]}``."""
    with torch.no_grad():
        out = model(images, batch["boxes"], batch["prompt_ids"], batch["prompt_mask"], batch["target_ids"],
                    batch["target_mask"], image_sizes=batch.get("image_sizes"))
    nll = -out.logits.log_softmax(-1).gather(-1, batch["target_ids"].unsqueeze(-1)).squeeze(-1)
    mask = batch["target_mask"].bool()
    res = {"all": float(nll[mask].mean())}
    for name, ids in (classes or {}).items():
        m = mask & torch.isin(batch["target_ids"], torch.tensor(sorted(ids), dtype=batch["target_ids"].dtype))
        res[name] = float(nll[m].mean()) if m.any() else float("nan")
    return res


def main(argv=None) -> dict:
    from pixelllm.configs import get_config
    from pixelllm.data.datasets import collate
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.data.vocab import COLORS, SHAPES
    from pixelllm.engine.builder import load_trained_model
    from pixelllm.engine.datasets import task_dataset
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.utils import results_dir, write_json

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stage", default="pretrain", choices=["pretrain", "ln_trace"])
    ap.add_argument("--n", type=int, default=200, help="test samples")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = get_config(args.stage, smoke=args.smoke)
    paths = resolve_paths(cfg)
    tok = load_tokenizer(paths.tokenizer)
    model = load_trained_model(cfg, tok)
    task = "caption" if args.stage == "pretrain" else "trace"
    ds = task_dataset(task, "test", cfg, paths, tok, model.image_size)
    items, seen = [], set()
    for i in range(len(ds)):                                   # one sample per image (5 captions per image)
        item = ds[i]
        if item["image_ids"] not in seen:
            seen.add(item["image_ids"])
            items.append(item)
        if len(items) == args.n:
            break
    batch = collate(items)
    perm = torch.roll(torch.arange(len(batch["images"])), 1)   # every sample gets another image
    classes = {"colour": word_ids(tok, COLORS), "shape": word_ids(tok, SHAPES)}
    ce = {"real": caption_ce(model, batch, batch["images"], classes),
          "blank": caption_ce(model, batch, torch.zeros_like(batch["images"]), classes),
          "shuffled": caption_ce(model, batch, batch["images"][perm], classes)}
    res = {"stage": args.stage, "n": len(batch["images"]),
           "ce_real_images": ce["real"]["all"], "ce_blank_images": ce["blank"]["all"],
           "ce_shuffled_images": ce["shuffled"]["all"],
           "colour_word_ce": {k: v["colour"] for k, v in ce.items()},
           "shape_word_ce": {k: v["shape"] for k, v in ce.items()}}
    res["image_gain_nats"] = res["ce_blank_images"] - res["ce_real_images"]
    res["this_image_gain_nats"] = res["ce_shuffled_images"] - res["ce_real_images"]
    write_json(results_dir(args.smoke) / "visual_reliance.json", res)
    print(res)
    return res


if __name__ == "__main__":
    main()
