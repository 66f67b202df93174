"""Text: COCO-style captions, VG-style region phrases and Localized Narratives (utterances with
speaking times plus the simulated mouse trace).

Narrative object words are spoken while the simulated pointer hovers over that object, and position
phrases are computed from where the object actually is (image thirds).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from pixelllm.data import vocab as V
from pixelllm.data.synthetic.constants import DEFAULT_ODDITY_RATE, TRACE_BAND
from pixelllm.data.synthetic.language import position_phrase, relation_holds
from pixelllm.data.synthetic.scene import Scene, SceneObject


def _join_and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _a(word: str) -> str:
    """Indefinite article for the next word ("an orange star", "a red star")."""
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def captions_for_scene(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` short COCO-style captions (lower case, no final period), e.g.
    "a big red circle and a small blue star", "two shapes on a grey background"."""
    objs = sorted(scene.objects, key=lambda o: o.center[0])           # left to right
    W, H = scene.width, scene.height
    bg = scene.background
    templates = []
    templates.append(_join_and([f"a {o.size} {o.color} {o.shape}" for o in objs]))
    if len(objs) == 1:
        templates.append(f"a single {objs[0].color} {objs[0].shape} on {_a(bg)} {bg} background")
    else:
        templates.append(f"{V.NUMBER_WORDS[len(objs)]} shapes on {_a(bg)} {bg} background")
    templates.append(_join_and([f"{_a(o.color)} {o.color} {o.shape} {position_phrase(o.bbox, W, H)}" for o in objs]))
    groups: dict[tuple[str, str], int] = {}
    for o in objs:
        groups[(o.color, o.shape)] = groups.get((o.color, o.shape), 0) + 1
    templates.append(_join_and([f"{_a(c)} {c} {s}" if k == 1 else f"{V.NUMBER_WORDS[k]} {c} {_plural(s)}"
                                for (c, s), k in groups.items()]))
    pairs = [(a, rel, b) for a in objs for b in objs if a is not b for rel in V.RELATIONS
             if relation_holds(rel, a.bbox, b.bbox, W, H)]
    if pairs:
        a, rel, b = pairs[rng.integers(len(pairs))]
        templates.append(f"{_a(a.color)} {a.color} {a.shape} {rel} {_a(b.color)} {b.color} {b.shape}")
    else:
        templates.append(f"a picture of a {objs[0].size} {objs[0].color} {objs[0].shape} on {_a(bg)} {bg} background")
    if n <= len(templates):
        return templates[:n]
    return templates + [templates[int(rng.integers(len(templates)))] for _ in range(n - len(templates))]


def region_phrases_for_object(scene: Scene, obj: SceneObject, rng: np.random.Generator) -> list[str]:
    """Candidate VG-style phrases for one object ("small blue star", "red circle next to a square")."""
    W, H = scene.width, scene.height
    out = [f"{obj.size} {obj.color} {obj.shape}", f"{obj.color} {obj.shape}",
           f"{obj.size} {obj.color} {obj.shape} {position_phrase(obj.bbox, W, H)}"]
    rel = [(r, b) for b in scene.objects if b is not obj for r in V.RELATIONS
           if relation_holds(r, obj.bbox, b.bbox, W, H)]
    if rel:
        r, b = rel[rng.integers(len(rel))]
        out.append(f"{obj.color} {obj.shape} {r} a {b.shape}")
    return out


_OPENINGS = ("In this image we can see", "In this picture we can see", "In this image I can see",
             "Here we can see")


def _narrative_units(scene: Scene, rng: np.random.Generator) -> list[tuple[list[str], Any, bool]]:
    """The narrative as (words, target, ends_sentence) units; target = object id, a region
    ("background": the whole image, "top": the top band) or None (connective words, during which the
    pointer moves)."""
    W, H = scene.width, scene.height
    u = rng.random()
    if u < 0.6:
        objs = sorted(scene.objects, key=lambda o: o.center[0])
    elif u < 0.8:
        objs = sorted(scene.objects, key=lambda o: o.center[1])
    else:
        objs = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    units: list[tuple[list[str], Any, bool]] = []

    def desc(o: SceneObject) -> list[str]:
        words = ([o.size] if rng.random() < 0.7 else []) + [o.color, o.shape]
        return [_a(words[0])] + words

    def pos(o: SceneObject) -> list[str]:
        return position_phrase(o.bbox, W, H).split()

    m = int(rng.integers(1, min(3, len(objs)) + 1))            # objects in the opening sentence
    units.append((_OPENINGS[rng.integers(len(_OPENINGS))].split(), None, False))
    for k, o in enumerate(objs[:m]):
        if k > 0:
            units.append((["and"] if k == m - 1 else [","], None, False))
        units.append((desc(o) + (pos(o) if rng.random() < 0.8 else []), o.id, k == m - 1))
    for o in objs[m:]:
        v = rng.random()
        if v < 0.45:
            p = pos(o)
            units.append(([p[0].capitalize()] + p[1:] + ["there", "is"] + desc(o), o.id, True))
        elif v < 0.75:
            units.append((["We", "can", "also", "see"], None, False))
            units.append((desc(o) + pos(o), o.id, True))
        else:
            units.append((["There", "is", "also"], None, False))
            units.append((desc(o) + pos(o), o.id, True))
    if rng.random() < 0.7:
        bg = scene.background.split()
        v = rng.random()
        if v < 0.4:
            units.append((["In", "the", "background", "we", "can", "see", _a(bg[0])] + bg + ["surface"],
                          "background", True))
        elif v < 0.8:
            units.append((["The", "background", "is"] + bg, "background", True))
        else:                                                    # the pointer sweeps the top band only
            units.append((["At", "the", "top", "we", "can", "see", _a(bg[0])] + bg + ["surface"], "top", True))
    # Attach "," to the previous word and "." to sentence ends, as in a transcription.
    out: list[tuple[list[str], Any, bool]] = []
    for words, target, end in units:
        if words == [","]:
            prev = out[-1][0]
            prev[-1] += ","
            continue
        words = list(words)
        if end:
            words[-1] += "."
        out.append((words, target, end))
    return out


def _dwell_positions(d: dict, t: np.ndarray) -> np.ndarray:
    """Pointer (x, y) normalised at times ``t`` (K) while dwelling on ``d``: a slow orbit around an
    object's visible centroid, or a wide Lissajous sweep over the background (or the top band). K×2."""
    u = t - d["s"]
    if d["kind"] == "object":
        ang = d["omega"] * u + d["phase"]
        return np.stack([d["ax"] + d["rx"] * np.cos(ang), d["ay"] + d["ry"] * np.sin(ang)], -1)
    if d["kind"] == "top":
        return np.stack([0.5 + 0.35 * np.sin(d["w1"] * u + d["p1"]), 0.14 + 0.07 * np.sin(d["w2"] * u + d["p2"])], -1)
    return np.stack([0.5 + 0.32 * np.sin(d["w1"] * u + d["p1"]), 0.5 + 0.30 * np.sin(d["w2"] * u + d["p2"])], -1)


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3 - 2 * u)


def narrative_for_scene(scene: Scene, rng: np.random.Generator, masks: np.ndarray | None = None,
                        oddity_rate: float = DEFAULT_ODDITY_RATE) -> tuple[dict, list[Any], dict]:
    """A Localized Narratives record for ``scene`` plus its ground truth.

    Returns ``(record, targets, info)``: ``record`` in the official schema (``image_id`` a string,
    times in seconds, trace x/y normalised to the image and possibly outside [0, 1]); ``targets[k]``
    = what the pointer is on during utterance k (object id, "background", "top", or None while moving);
    ``info`` = counts (excursions, oddities) for the statistics.

    The pointer hovers over an object while that object's words (including its position phrase) are
    spoken, moves smoothly during connectives and pauses, sometimes overshoots out of the image
    (an excursion; beyond :data:`TRACE_BAND` the segment is split) and often leaves the image after
    the last word. ``masks`` (N×H×W visible masks) give the hover anchor = visible centroid; without
    them the visible-box centre is used.
    """
    W, H = scene.width, scene.height
    units = _narrative_units(scene, rng)
    # --- utterances of 1-3 words with speaking times ---
    utts: list[tuple[str, float, float, Any]] = []
    cursor = float(rng.uniform(0.4, 2.0))
    for words, target, end in units:
        i = 0
        while i < len(words):
            k = int(rng.choice((1, 2, 3), p=(0.3, 0.45, 0.25)))
            chunk = words[i:i + k]
            i += k
            dur = sum(rng.uniform(0.22, 0.36) + 0.02 * len(w) for w in chunk)
            utts.append((" ".join(chunk), cursor, cursor + dur, target))
            cursor += dur + rng.uniform(0.0, 0.12)
            if rng.random() < 0.04:
                cursor += rng.uniform(0.5, 1.3)                 # hesitation
        if end:
            cursor += rng.uniform(0.25, 0.8)                     # sentence pause
    # --- dwell intervals: consecutive utterances on the same target ---
    anchors = {}
    for idx, o in enumerate(scene.objects):
        if masks is not None and masks[idx].any():
            ys, xs = np.nonzero(masks[idx])
            anchors[o.id] = ((xs.mean() + 0.5) / W, (ys.mean() + 0.5) / H)
        else:
            anchors[o.id] = (o.center[0] / W, o.center[1] / H)
    size_of = {o.id: (o.bbox[2] / W, o.bbox[3] / H) for o in scene.objects}
    dwells: list[dict] = []
    for text, s, e, target in utts:
        if target is None:
            continue
        if dwells and dwells[-1]["target"] == target and s - dwells[-1]["e"] < 1.5:
            dwells[-1]["e"] = e
            continue
        if target in ("background", "top"):
            d = {"kind": target, "w1": rng.uniform(1.6, 2.6), "w2": rng.uniform(1.0, 1.8),
                 "p1": rng.uniform(0, 2 * math.pi), "p2": rng.uniform(0, 2 * math.pi)}
        else:
            bw, bh = size_of[target]
            d = {"kind": "object", "ax": anchors[target][0], "ay": anchors[target][1],
                 "rx": 0.22 * bw, "ry": 0.22 * bh, "omega": rng.uniform(2.0, 5.0) * rng.choice((-1, 1)),
                 "phase": rng.uniform(0, 2 * math.pi), "jit": 0.05 * min(bw, bh)}
        d.update(target=target, s=s, e=e)
        dwells.append(d)
    # --- sample times and pointer path ---
    t_begin = max(0.0, utts[0][1] - rng.uniform(0.2, 0.8))
    t_end = utts[-1][2] + rng.uniform(0.1, 0.7)
    ts = t_begin + np.cumsum(rng.uniform(0.06, 0.1, size=int((t_end - t_begin) / 0.06) + 2))
    ts = np.concatenate([[t_begin], ts[ts <= t_end]])
    xy = np.empty((len(ts), 2))
    jit = np.full(len(ts), 0.003)
    info = {"excursions": 0, "exits": 0}
    start = np.array(rng.uniform(0.25, 0.75, size=2))
    moves = []                                                   # (t0, t1, p0, p1)
    prev_t, prev_p = t_begin, start
    for d in dwells:
        p_in = _dwell_positions(d, np.array([d["s"]]))[0]
        moves.append((prev_t, d["s"], prev_p, p_in))
        prev_t, prev_p = d["e"], _dwell_positions(d, np.array([d["e"]]))[0]
    exit_p = None
    if rng.random() < 0.45:                                      # leave the image after the last word
        side = rng.integers(4)
        far = rng.uniform(1.05, 1.4)
        exit_p = prev_p.copy()
        exit_p[side % 2] = far if side < 2 else 1 - far
        info["exits"] = 1
    moves.append((prev_t, t_end + 1e-6, prev_p, exit_p if exit_p is not None else prev_p))
    excursion = None
    if len(moves) > 2 and rng.random() < 0.2:                    # overshoot out of the image between objects
        excursion = int(rng.integers(1, len(moves) - 1))
        info["excursions"] = 1
    for i, (t0, t1, p0, p1) in enumerate(moves):
        sel = (ts >= t0) & (ts < t1) if i < len(moves) - 1 else ts >= t0
        if not sel.any():
            continue
        u = _smoothstep((ts[sel] - t0) / max(t1 - t0, 1e-6))[:, None]
        if i == excursion:
            side = rng.integers(4)
            e = (p0 + p1) / 2
            e[side % 2] = rng.uniform(1.03, 1.25) if side < 2 else -rng.uniform(0.03, 0.25)
            wpt = 2 * e - (p0 + p1) / 2                          # quadratic Bezier through e at u=1/2
            xy[sel] = (1 - u) ** 2 * p0 + 2 * u * (1 - u) * wpt + u ** 2 * p1
        else:
            xy[sel] = p0 + (p1 - p0) * u
    for d in dwells:
        sel = (ts >= d["s"]) & (ts <= d["e"])
        xy[sel] = _dwell_positions(d, ts[sel])
        if d["kind"] == "object":
            jit[sel] = d["jit"]
    xy = xy + rng.normal(size=xy.shape) * jit[:, None]
    # --- split into segments where the pointer leaves the recorded band ---
    inside = np.all((xy >= -TRACE_BAND) & (xy <= 1 + TRACE_BAND), axis=1)
    segments: list[list[dict]] = []
    cur: list[dict] = []
    for (x, y), t, ok in zip(xy.tolist(), ts.tolist(), inside.tolist()):
        if ok:
            cur.append({"x": round(x, 4), "y": round(y, 4), "t": round(t, 3)})
        elif cur:
            segments.append(cur)
            cur = []
    if cur:
        segments.append(cur)
    timed = [{"utterance": text, "start_time": round(s, 3), "end_time": round(e, 3)} for text, s, e, _ in utts]
    # --- real-world oddities at a small rate ---
    odd = {"zero_duration": 0, "integer_times": 0, "no_trace": 0}
    if rng.random() < oddity_rate:
        k = int(rng.integers(len(timed)))
        timed[k]["end_time"] = timed[k]["start_time"]
        odd["zero_duration"] = 1
    if rng.random() < oddity_rate:
        timed[0]["start_time"] = int(math.floor(timed[0]["start_time"]))
        timed[-1]["end_time"] = int(math.ceil(timed[-1]["end_time"]))
        odd["integer_times"] = 1
    if rng.random() < oddity_rate:
        segments = []
        odd["no_trace"] = 1
    info.update(odd)
    annotator = int(rng.integers(0, 64))
    ds = f"synthetic_{scene.split}"
    record = {
        "dataset_id": ds,
        "image_id": str(scene.image_id),
        "annotator_id": annotator,
        "caption": " ".join(u["utterance"] for u in timed),
        "timed_caption": timed,
        "traces": segments,
        "voice_recording": f"{ds}/{ds}_{scene.image_id}_{annotator}.ogg",
    }
    info["utterances"] = len(timed)
    info["split_segments"] = int(len(segments) > 1)
    info["points"] = sum(len(s) for s in segments)
    info["points_outside"] = sum(1 for s in segments for p in s if not (0 <= p["x"] <= 1 and 0 <= p["y"] <= 1))
    return record, [u[3] for u in utts], info
