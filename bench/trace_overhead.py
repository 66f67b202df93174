"""What does the trace head cost at inference? Greedy generation with the tiny preset (batch 8, exactly
``--tokens`` new tokens, KV cache), with the trace head (``output_hidden_states`` + gather + head) vs
without (plain ``generate``); the two are interleaved over ``--repeats`` runs and the medians compared.
Also times one training step (forward + backward, batch 16) with and without the frozen features cached.
Writes ``results/trace_overhead.json`` {with_s, without_s, overhead_ratio, ...}: medians of this
process's CPU seconds (stable on a shared machine; 1 torch thread by default), wall-clock medians beside.

    python bench/trace_overhead.py [--repeats 40] [--tokens 20] [--batch 8]

Goal: overhead_ratio = with_s / without_s − 1 ≤ 0.05, for the trace head of the stage-2 config of record
(``configs/ln_trace.py``: the pointer head with its context layer, points from the state that has read each
word, so generation adds one teacher-forced decoder pass over the generated tokens);
``overhead_ratio_paper_head`` is the same for the paper's MLP head on the emitting state. Random-init
weights (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import random
import statistics
import time


def _time(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call. On a shared machine the CPU time is the
    stable number (other processes inflate the wall time, not our CPU time)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _median_time(fn, repeats: int) -> tuple[float, float]:
    ts = [_time(fn) for _ in range(repeats)]
    return statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)


def main(argv: list[str] | None = None) -> dict:
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from pixelllm.configs import get_config
    from pixelllm.modeling.build import build_pixelllm
    from pixelllm.utils import results_dir, write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least sensitive to machine load)")
    ap.add_argument("--out", default=None, help="results JSON (default results/trace_overhead.json)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    record = get_config("ln_trace").model_overrides                    # the configs of record's head
    paper = build_pixelllm("tiny", head="mlp", point_state="emit").eval()
    model = build_pixelllm("tiny", **record).eval()
    vocab = model.language_model.vocab_size
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, model.image_size, model.image_size, generator=g)
    prompt = torch.randint(3, vocab, (args.batch, 6), generator=g)
    prompt[:, -1] = 1                                                   # prompts end with EOS
    kw = dict(prompt_ids=prompt, prompt_mask=prompt > 0, max_new_tokens=args.tokens, min_new_tokens=args.tokens)

    def run(m, with_trace: bool):
        tokens, _, points = m.generate(images, with_trace=with_trace, **kw)
        assert tokens.shape[1] == args.tokens and (points is not None) == with_trace

    for m in (model, paper):
        run(m, True), run(m, False)                                        # warm-up
    calls = {"with": (model, True), "without": (model, False), "paper_with": (paper, True),
             "paper_without": (paper, False)}
    times: dict[str, list] = {k: [] for k in calls}
    order = random.Random(0)
    for _ in tqdm(range(args.repeats), desc="generate with / without trace"):
        keys = list(calls)
        order.shuffle(keys)                     # interleaved in a new order each round: drift and order cancel
        for k in keys:
            times[k].append(_time(lambda: run(*calls[k])))
    wall = {k: statistics.median(t[0] for t in ts) for k, ts in times.items()}
    cpu = {k: statistics.median(t[1] for t in ts) for k, ts in times.items()}
    with_wall, without_wall, with_s, without_s = wall["with"], wall["without"], cpu["with"], cpu["without"]

    # one training step, batch 16, 20 target tokens: plain and with the frozen features cached
    model.train()
    tb = args.train_batch
    timgs = torch.rand(tb, 3, model.image_size, model.image_size, generator=g)
    tprompt = torch.randint(3, vocab, (tb, 6), generator=g)
    target = torch.randint(3, vocab, (tb, args.tokens), generator=g)
    target[:, -1] = 1
    frozen = model.frozen_image_features(timgs)                         # what stage 2 caches per image

    def step(cached: bool):
        out = model(timgs, None, tprompt, None, target, features=frozen if cached else None)
        loss = F.cross_entropy(out.logits.flatten(0, 1), target.flatten()) + 0.1 * out.points.mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    step(False), step(True)
    step_wall, step_s = _median_time(lambda: step(False), max(3, args.repeats // 3))
    step_cached_wall, step_cached_s = _median_time(lambda: step(True), max(3, args.repeats // 3))

    result = {
        "with_s": with_s, "without_s": without_s, "overhead_ratio": with_s / without_s - 1.0,
        "head": record, "overhead_ratio_paper_head": cpu["paper_with"] / cpu["paper_without"] - 1.0,
        "paper_head_with_s": cpu["paper_with"], "paper_head_without_s": cpu["paper_without"],
        "preset": "tiny", "batch": args.batch, "new_tokens": args.tokens, "repeats": args.repeats,
        "clock": "process CPU seconds (median); *_wall_s = wall-clock medians",
        "with_wall_s": with_wall, "without_wall_s": without_wall,
        "train_step_b16_s": step_s, "train_step_b16_cached_frozen_s": step_cached_s,
        "train_step_b16_wall_s": step_wall, "train_step_b16_cached_frozen_wall_s": step_cached_wall,
        "threads": torch.get_num_threads(),
    }
    out = args.out or results_dir() / "trace_overhead.json"
    write_json(out, result)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    return result


if __name__ == "__main__":
    main()
