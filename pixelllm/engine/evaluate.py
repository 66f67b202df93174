"""Evaluation of a captioner: teacher-forced loss terms and the trace metric, free-running captions, the
pointing metrics (:func:`evaluate_pointing`), and the Trainer's default eval hook."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable

from pixelllm.configs.base import TrainConfig


def teacher_forced_eval(model, dataset, batch_size: int = 32, device: str = "cpu", max_batches: int | None = None,
                        cfg: TrainConfig | None = None) -> dict:
    """Teacher-forced metrics on ``dataset`` (collate batches): the loss terms (``ce``, ``point_l1_px``)
    and, when the batches carry ``trace_samples``, the trace metric ``point_l1`` (normalised, closest
    ground-truth sample, PAPER_NOTES.md §2.6) with the image-centre baseline on the same tokens.

    Returns also per-sample lists ``pred`` / ``targets`` (T×4 corners) / ``valid`` (T) / ``samples``
    (T×16×2), all normalised [0, 1], for baselines and plots."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from pixelllm.data.datasets import collate
    from pixelllm.modeling.losses import pixelllm_loss
    from pixelllm.engine.trainer import forward_batch, to_device
    from pixelllm.eval.trace import centre_points, normalize_points, point_l1

    cfg = cfg or TrainConfig()
    was = model.training
    model.eval()
    sums = {"ce": 0.0, "point_l1_px": 0.0}
    n_tok = n_pt = 0
    preds, valids, samples, targets = [], [], [], []
    with torch.no_grad():
        for k, b in enumerate(DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)):
            if max_batches is not None and k >= max_batches:
                break
            b = to_device(b, torch.device(device))
            logits, points, cells = forward_batch(model, b)
            out = pixelllm_loss(logits, points, b, lambda_point=cfg.lambda_point, label_smoothing=cfg.label_smoothing,
                                cell_logits=cells, cell_weight=cfg.cell_weight)
            sums["ce"] += float(out["ce"]) * int(out["n_tokens"])
            n_tok += int(out["n_tokens"])
            if "n_points" in out:
                sums["point_l1_px"] += float(out["point_l1"]) * int(out["n_points"])
                n_pt += int(out["n_points"])
            if "trace_samples" in b:
                pn = normalize_points(points.float().cpu(), b["image_sizes"].cpu())       # B×T×4 in [0,1]
                gn = normalize_points(b["points"].float().cpu(), b["image_sizes"].cpu())  # ground-truth corners
                for i in range(len(pn)):
                    t = int(b["target_mask"][i].sum())
                    preds.append(pn[i, :t])
                    valids.append(b["point_valid"][i, :t].cpu().numpy())
                    samples.append(b["trace_samples"][i, :t].cpu().numpy())
                    targets.append(gn[i, :t])
    model.train(was)
    if n_tok == 0:    # an empty split must not report a perfect (zero) loss
        raise ValueError(f"teacher-forced evaluation: {len(dataset)} samples with no target token to score")
    res = {"ce": sums["ce"] / n_tok, "point_l1_px": sums["point_l1_px"] / max(n_pt, 1) if n_pt else float("nan")}
    if preds:
        P, Vd, S_ = np.concatenate(preds), np.concatenate(valids), np.concatenate(samples)
        res["point_l1"] = point_l1(P, S_, Vd)
        res["centre_l1"] = point_l1(centre_points(Vd.shape), S_, Vd)
        res.update(pred=preds, valid=valids, samples=samples, targets=targets)
    return res


def generate_captions(model, dataset, tokenizer, prompt: str, batch_size: int = 32, max_new_tokens: int = 48,
                      num_beams: int = 1, device: str = "cpu", limit: int | None = None,
                      progress: bool = True) -> list[dict]:
    """Free-running captions (+ per-word points) for the distinct images of ``dataset`` (a task dataset
    whose samples carry ``image_ids``). Returns one dict per image: ``image_id``, ``text``, ``tokens``,
    ``points`` (T×4 pixels of the resized input), ``image_size`` (h, w after resize)."""
    import torch
    from tqdm.auto import tqdm

    seen, idx = set(), []
    for i in range(len(dataset)):                                     # first sample of each image
        iid = _image_id_of(dataset, i)
        if iid not in seen:
            seen.add(iid)
            idx.append(i)
        if limit is not None and len(idx) >= limit:
            break
    out = []
    was = model.training
    model.eval()
    for s in tqdm(range(0, len(idx), batch_size), desc="captioning", disable=not progress):
        items = [dataset[i] for i in idx[s:s + batch_size]]
        images = torch.stack([it["images"] for it in items]).to(device)
        sizes = torch.stack([it["image_sizes"] for it in items]).to(device)
        boxes = torch.stack([it["boxes"] for it in items]).to(device)
        res = model.caption(images, boxes, prompt=prompt, tokenizer=tokenizer, num_beams=num_beams,
                            max_new_tokens=max_new_tokens, image_sizes=sizes)
        for it, r in zip(items, res):
            out.append({"image_id": it["image_ids"], "image_size": it["image_sizes"].tolist(), **r})
    model.train(was)
    return out


def _image_id_of(dataset, i: int) -> str:
    """Image id of sample ``i`` without loading the image when the dataset exposes its records."""
    if hasattr(dataset, "narratives"):
        return str(dataset.narratives[i].image_id)
    if hasattr(dataset, "items") and isinstance(dataset.items[i], tuple):
        return str(dataset.items[i][0]["image_id"])
    return str(dataset[i]["image_ids"])


def evaluate_pointing(model, dataset, tokenizer, batch_size: int = 32, device: str = "cpu",
                      caption_images: int | None = None, max_new_tokens: int = 48, prompt: str | None = None,
                      seed: int = 0, progress: bool = True, num_beams: int = 1) -> dict:
    """``pointing_accuracy`` of a trace model on a synthetic LN split, teacher-forced and free-running
    (PAPER_NOTES.md §2.8), with its baselines. One line in a notebook::

        evaluate_pointing(model, ln_test, tok)   # ln_test = task_dataset("trace", "test", cfg, paths, tok,
                                                 #     model.image_size, return_trace_samples=True), or a Subset

    ``dataset``: an :class:`~pixelllm.data.datasets.LNTraceDataset` (or a ``Subset`` of one) built with
    ``return_trace_samples=True`` and no flip, read from ``<data>/localized_narratives/
    synthetic_{split}_localized_narratives.jsonl``; the pointing sidecar beside it, ``<data>/coco/
    instances_{split}.json`` (boxes) and ``<data>/scenes.json`` (colours) are found from that path.

    * teacher-forced (:func:`teacher_forced_eval`): tokens whose utterance — the one the word was spoken
      in (:func:`~pixelllm.data.localized_narratives.span_token_utterances`) — is on one object; a hit when
      the centre of the token's predicted box lies in that object's box. Baselines on the same tokens: the
      image centre, and the box centre of a random object of the same image (seeded by ``seed``); and the
      dataset's target itself (``pointing_accuracy_target``: centre of the token's target box — the ceiling
      of a model that fits those targets: about 0.86 for the paper's relative-position targets, which give
      18 % of on-object words another object's trace, PAPER_NOTES.md §2.4; 1.00 for ``span`` targets). ``pointing_accuracy_relative_position``
      / ``pointing_accuracy_target_relative_position`` label tokens by the paper's relative-position rule
      instead (how this metric was defined before; a narrative whose utterances are not found in its caption
      is labelled that way in both, counted in ``n_narratives_relative_position_labels``).
    * free-running (:func:`generate_captions` on the first ``caption_images`` images with ``num_beams``,
      ``prompt`` default the dataset's): phrases "colour shape" of the generated caption; a hit when the shape noun's point lies
      in the box of an object of that colour and shape; the image centre as baseline.

    * the teacher-forced tokens split by :func:`~pixelllm.eval.trace.identified_tokens`:
      ``pointing_accuracy_identified`` on tokens whose state has already read a colour, shape or position
      word of their object, ``pointing_accuracy_unidentified`` on the others (their point can only guess
      which object comes next), ``identified_fraction`` the share of the first kind (PAPER_NOTES.md §2.8).

    ``caption_images=0`` skips the free-running part. Returns ``pointing_accuracy``, ``pointing_accuracy_centre``, ``pointing_accuracy_random_object``,
    ``pointing_accuracy_target``,
    ``n_tokens`` (on-object tokens), ``n_narratives``, the teacher-forced ``point_l1`` / ``centre_l1`` / ``ce`` of
    the same pass, ``pointing_accuracy_generated``,
    ``pointing_accuracy_generated_centre``, ``pointing_accuracy_generated_existing`` (only the phrases whose
    colour + shape exists in the image: pointing apart from naming errors), ``n_phrases``,
    ``n_phrases_existing``, ``n_images_generated`` and ``generated`` (per image: ``image_id``, ``text``,
    ``phrases`` [{colour, shape, exists, hit}]).
    """
    import numpy as np
    from torch.utils.data import Subset

    from pixelllm.data import vocab as V
    from pixelllm.data.localized_narratives import (caption_token_offsets, num_aligned_tokens, span_token_utterances,
                                                    token_to_utterance, utterance_traces)
    from pixelllm.data.pointing import load_object_boxes, load_pointing, pointing_path
    from pixelllm.eval.trace import colour_shape_phrases, generated_pointing_hits, identified_tokens

    base, indices = dataset, list(range(len(dataset)))
    while isinstance(base, Subset):
        indices = [base.indices[i] for i in indices]
        base = base.dataset
    if not hasattr(base, "token_utterances") or not getattr(base, "return_trace_samples", False):
        raise ValueError("evaluate_pointing: dataset must be an LNTraceDataset (or a Subset of one) built with "
                         "return_trace_samples=True")
    if getattr(base, "hflip_prob", 0) > 0:
        raise ValueError(f"evaluate_pointing: dataset flips images (hflip_prob={base.hflip_prob}); use 0")
    if not base.narratives or not base.narratives[0].source:
        raise ValueError("evaluate_pointing: the narratives must be read from an LN file (their source is unknown)")
    ln_path = Path(base.narratives[0].source.rsplit(":", 1)[0])
    m = re.fullmatch(r"synthetic_(\w+)_localized_narratives\.jsonl", ln_path.name)
    if m is None:
        raise ValueError(f"evaluate_pointing: {ln_path} is not a synthetic world LN file "
                         "(synthetic_{split}_localized_narratives.jsonl)")
    data = ln_path.parent.parent
    table = load_pointing(pointing_path(ln_path), ln_path)
    objects = load_object_boxes(data / "coco" / f"instances_{m.group(1)}.json", data / "scenes.json")

    # --- teacher-forced
    tf = teacher_forced_eval(model, dataset, batch_size=batch_size, device=device)
    id_words = set(V.COLORS) | set(V.SHAPES) | set(V.POSITION_WORDS)
    labelled: dict[str, list] = {"own": [], "relative_position": []}   # (pred, target, box, image boxes, identified)
    fallback = 0
    for pred, target, i in zip(tf["pred"], tf["targets"], indices):
        n = base.narratives[i]
        t = len(pred)
        if base.target_length(i) != t:
            raise RuntimeError(f"{n.source}: {t} predicted tokens but {base.target_length(i)} target tokens")
        key = (str(n.image_id), n.annotator_id)
        if key not in table:
            raise KeyError(f"{n.source}: narrative {key} has no line in {pointing_path(ln_path)}")
        objs = {o.ann_id: o.box for o in objects.get(str(n.image_id), [])}
        all_boxes = np.array(list(objs.values()), dtype=np.float64).reshape(-1, 4)
        ids = base._ids(n.caption, None)
        utt_valid = utterance_traces(n).valid
        rel = token_to_utterance(num_aligned_tokens(len(ids) - 1, base.max_target_len, "official"),
                                 utt_valid, "official")[: t - 1]
        own = span_token_utterances(n, caption_token_offsets(tokenizer, n.caption)[: t - 1], utt_valid)
        if own is None:                       # utterances not found in the caption: relative position
            own, fallback = rel, fallback + 1
        tokens = tokenizer.convert_ids_to_tokens(ids[:t])
        for name, utt in (("own", own), ("relative_position", rel)):
            anns = [table[key][u] if u >= 0 else None for u in utt.tolist()] + [None]      # + EOS
            for u, ann in zip(utt.tolist(), anns):
                if ann is not None and ann not in objs:
                    raise KeyError(f"{n.source}: utterance {u} points at annotation {ann}, not an object of image "
                                   f"{n.image_id}")
            seen = identified_tokens(tokens, anns, id_words)
            labelled[name] += [(pred[j], target[j], objs[a], all_boxes, bool(seen[j]))
                               for j, a in enumerate(anns) if a is not None]
    res = {**_pointing_scores(labelled["own"], seed),
           **{f"{k}_relative_position": v for k, v in _pointing_scores(labelled["relative_position"], seed).items()
              if k in ("pointing_accuracy", "pointing_accuracy_target", "n_tokens")},
           "n_narratives": len(indices), "n_narratives_relative_position_labels": fallback,
           **{k: tf[k] for k in ("point_l1", "centre_l1", "ce") if k in tf}}
    if caption_images == 0:
        return res

    # --- free-running
    shape_words = {**{s: s for s in V.SHAPES}, **{s + ("es" if s.endswith("s") else "s"): s for s in V.SHAPES}}
    gen = generate_captions(model, dataset, tokenizer, prompt=prompt if prompt is not None else base.prompt,
                            batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams,
                            device=device, limit=caption_images, progress=progress)
    hits, colour_hits, centre_hits, exists, details = [], [], [], [], []
    for g in gen:
        h, w = g["image_size"]
        pts = np.asarray(g["points"], np.float64).reshape(-1, 4) / [w, h, w, h]      # normalised [0, 1]
        phrases = colour_shape_phrases(g["tokens"], V.COLORS, shape_words)
        objs = [(o.color, o.shape, o.box) for o in objects.get(str(g["image_id"]), [])]
        hit = generated_pointing_hits(phrases, pts, objs)
        hits.append(hit)
        colour_hits.append(generated_pointing_hits(phrases, pts, objs, match="colour"))
        centre_hits.append(generated_pointing_hits(phrases, np.full_like(pts, 0.5), objs))
        named = {(c, s) for c, s, _ in objs}
        exists.append(np.array([(p["colour"], p["shape"]) in named for p in phrases], dtype=bool))
        details.append({"image_id": g["image_id"], "text": g["text"],
                        "phrases": [{"colour": p["colour"], "shape": p["shape"], "exists": bool(e), "hit": bool(k)}
                                    for p, e, k in zip(phrases, exists[-1], hit)]})
    H, HC, C, E = (np.concatenate(x or [np.zeros(0, bool)]) for x in (hits, colour_hits, centre_hits, exists))
    res.update(pointing_accuracy_generated=float(H.mean()) if len(H) else float("nan"),
               pointing_accuracy_generated_colour=float(HC.mean()) if len(HC) else float("nan"),
               pointing_accuracy_generated_centre=float(C.mean()) if len(C) else float("nan"),
               pointing_accuracy_generated_existing=float(H[E].mean()) if E.any() else float("nan"),
               n_phrases=int(len(H)), n_phrases_existing=int(E.sum()), n_images_generated=len(gen),
               generated=details)
    return res


def _pointing_scores(rows: list, seed: int) -> dict:
    """Teacher-forced pointing scores of on-object tokens ``rows`` = [(predicted corners, target corners,
    object box, the image's object boxes, identified)], all normalised: the model, its identified /
    unidentified split, the training target, the image centre and a random object of the image."""
    import numpy as np

    from pixelllm.eval.trace import centre_points, pointing_accuracy, random_object_points

    P, T, B = (np.asarray([r[k] for r in rows], np.float64).reshape(-1, 4) for k in (0, 1, 2))
    K = np.asarray([r[4] for r in rows], bool)
    on = np.ones(len(rows), bool)
    return {"pointing_accuracy": pointing_accuracy(P, B, on),
            "pointing_accuracy_identified": pointing_accuracy(P, B, K),
            "pointing_accuracy_unidentified": pointing_accuracy(P, B, ~K),
            "identified_fraction": float(K.mean()) if len(K) else float("nan"),
            "pointing_accuracy_target": pointing_accuracy(T, B, on),
            "pointing_accuracy_centre": pointing_accuracy(centre_points(on.shape), B, on),
            "pointing_accuracy_random_object": pointing_accuracy(random_object_points([r[3] for r in rows], seed), B, on)
            if len(rows) else float("nan"),
            "n_tokens": int(len(rows))}


def make_eval_fn(cfg, paths, tokenizer, image_size: int, device: str = "cpu",
                 n_samples: int = 64) -> Callable:
    """The training eval hook: teacher-forced metrics on the first ``n_samples`` val samples of the
    config's first task (trace → also the normalised ``point_l1``)."""
    from torch.utils.data import Subset

    task = next(iter(cfg.tasks))
    kw = {"return_trace_samples": True} if task == "trace" else {}
    from pixelllm.engine.datasets import task_dataset

    val = task_dataset(task, "val", cfg, paths, tokenizer, image_size, **kw)
    val = Subset(val, range(min(n_samples, len(val))))

    def eval_fn(model, step):
        res = teacher_forced_eval(model, val, batch_size=32, device=device, cfg=cfg)
        return {f"val_{k}": v for k, v in res.items() if isinstance(v, float) and math.isfinite(v)}

    return eval_fn




def evaluate_word(model, dataset, tokenizer, word: str, boxes: dict, batch_size: int = 16, device: str = "cpu",
                  max_new_tokens: int = 48, prompt: str | None = None, progress: bool = False) -> dict:
    """How a trace model says and points at one ``word`` (e.g. a new object name learnt from your own data,
    notebook 11) on an LN dataset whose objects named ``word`` are known by box.

    Args:
        dataset: an :class:`~pixelllm.data.datasets.LNTraceDataset` built with ``return_trace_samples=True``
            (or a ``Subset`` of one), no flip.
        boxes: ``{image_id (str): [(x0, y0, x1, y1), ...]}`` the boxes of the objects ``word`` names in each
            image, normalised by the image width/height; an image without one maps to ``[]`` (or is absent).
    A word spans the tokens of :func:`~pixelllm.eval.trace.words_of_tokens` (a new word is often several
    sub-word pieces); its point is the mean of those tokens' box centres (:func:`~pixelllm.eval.trace.word_centres`,
    PAPER_NOTES.md §11).

    Returns:
        ``word_pointing_accuracy``: teacher-forced, over the occurrences of ``word`` in the reference narratives
        of images with such an object, the fraction whose point lies in one of its boxes (PAPER_NOTES.md §2.8);
        ``word_pointing_accuracy_centre``: the image centre's on the same occurrences; ``n_word``; the
        teacher-forced ``ce`` / ``point_l1``; free-running (greedy, one caption per image): ``word_recall``
        (images with the object whose caption says ``word``), ``word_false_rate`` (images without it whose
        caption says it), ``word_pointing_accuracy_generated`` (generated occurrences whose point lies in a
        box), ``n_images`` / ``n_images_with`` / ``n_generated_word``, and ``generated`` (the captions).
    """
    import numpy as np
    from torch.utils.data import Subset

    from pixelllm.eval.trace import points_in_boxes, word_centres

    base, indices = dataset, list(range(len(dataset)))
    while isinstance(base, Subset):
        indices = [base.indices[i] for i in indices]
        base = base.dataset
    if not getattr(base, "return_trace_samples", False) or not hasattr(base, "narratives"):
        raise ValueError("evaluate_word: dataset must be an LNTraceDataset (or a Subset of one) built with "
                         "return_trace_samples=True")
    word = word.lower()

    def hit(p: np.ndarray, bxs) -> bool:
        b = np.asarray(bxs, np.float64).reshape(-1, 4)
        return bool(points_in_boxes(np.broadcast_to(p, (len(b), 2)), b).any()) if len(b) else False

    tf = teacher_forced_eval(model, dataset, batch_size=batch_size, device=device)
    hits, centre_hits = [], []
    for pred, i in zip(tf["pred"], indices):
        n = base.narratives[i]
        bxs = boxes.get(str(n.image_id), [])
        if not len(bxs):
            continue
        ids = [t for t in base[i]["target_ids"].tolist()[: len(pred)] if t != tokenizer.eos_token_id]
        for p in word_centres(tokenizer.convert_ids_to_tokens(ids), pred, word):
            hits.append(hit(p, bxs))
            centre_hits.append(hit(np.array([0.5, 0.5]), bxs))
    res = {"word": word, "word_pointing_accuracy": float(np.mean(hits)) if hits else float("nan"),
           "word_pointing_accuracy_centre": float(np.mean(centre_hits)) if hits else float("nan"),
           "n_word": len(hits), "ce": tf["ce"], "point_l1": tf.get("point_l1", float("nan"))}
    gen = generate_captions(model, dataset, tokenizer, prompt=prompt if prompt is not None else base.prompt,
                            batch_size=batch_size, max_new_tokens=max_new_tokens, device=device, progress=progress)
    said_with, said_without, gen_hits = [], [], []
    for g in gen:
        h, w = g["image_size"]
        pts = np.asarray(g["points"], np.float64).reshape(-1, 4) / [w, h, w, h]
        occ = word_centres(g["tokens"], pts, word)
        bxs = boxes.get(str(g["image_id"]), [])
        (said_with if len(bxs) else said_without).append(len(occ) > 0)
        if len(bxs):
            gen_hits += [hit(p, bxs) for p in occ]
    res.update(word_recall=float(np.mean(said_with)) if said_with else float("nan"),
               word_false_rate=float(np.mean(said_without)) if said_without else float("nan"),
               word_pointing_accuracy_generated=float(np.mean(gen_hits)) if gen_hits else float("nan"),
               n_images=len(gen), n_images_with=len(said_with), n_generated_word=len(gen_hits), generated=gen)
    return res
