"""How much does the trained captioner read the image? Teacher-forced caption CE on test images with
(a) the real images, (b) blank (all-zero) images, (c) the images shuffled across the batch.

If (a) ≈ (b) the language model has learned the caption prior and ignores the visual tokens — the
diagnosis behind the missed grounding goals in README.md. Writes ``results/visual_reliance.json``.

    python bench/visual_reliance.py [--stage pretrain|ln_trace] [--n 64]
"""
from __future__ import annotations

import argparse

import torch


def caption_ce(model, batch, images: torch.Tensor) -> float:
    """Mean token CE (no smoothing) of ``batch``'s targets given ``images`` (B×3×S×S in [0, 1])."""
    with torch.no_grad():
        out = model(images, batch["boxes"], batch["prompt_ids"], batch["prompt_mask"], batch["target_ids"],
                    batch["target_mask"], image_sizes=batch.get("image_sizes"))
    logp = out.logits.log_softmax(-1).gather(-1, batch["target_ids"].unsqueeze(-1)).squeeze(-1)
    mask = batch["target_mask"].float()
    return float(-(logp * mask).sum() / mask.sum())


def main(argv=None) -> dict:
    from pixelllm import train as T
    from pixelllm.configs import get_config
    from pixelllm.data.datasets import collate
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.utils import results_dir, write_json

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stage", default="pretrain", choices=["pretrain", "ln_trace"])
    ap.add_argument("--n", type=int, default=64, help="test samples")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = get_config(args.stage, smoke=args.smoke)
    paths = T.resolve_paths(cfg)
    tok = load_tokenizer(paths.tokenizer)
    model = T.load_trained_model(cfg, tok)
    task = "caption" if args.stage == "pretrain" else "trace"
    ds = T.task_dataset(task, "test", cfg, paths, tok, model.image_size)
    batch = collate([ds[i] for i in range(min(args.n, len(ds)))])
    perm = torch.roll(torch.arange(len(batch["images"])), 1)   # every sample gets another sample's image
    res = {"stage": args.stage, "n": len(batch["images"]),
           "ce_real_images": caption_ce(model, batch, batch["images"]),
           "ce_blank_images": caption_ce(model, batch, torch.zeros_like(batch["images"])),
           "ce_shuffled_images": caption_ce(model, batch, batch["images"][perm])}
    res["image_gain_nats"] = res["ce_blank_images"] - res["ce_real_images"]
    write_json(results_dir(args.smoke) / "visual_reliance.json", res)
    print(res)
    return res


if __name__ == "__main__":
    main()
