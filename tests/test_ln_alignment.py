"""The official LN trace → token alignment, on hand-computed cases (PAPER_NOTES.md §2)."""
import json

import numpy as np
import pytest

from pixelllm.data.errors import SkipCounter
from pixelllm.data.localized_narratives import (
    align_tokens_to_trace, iter_localized_narratives, load_localized_narratives, parse_narrative,
    token_to_utterance, utterance_traces,
)


def record(utterances, traces, caption=None):
    """An LN JSON dict; ``utterances`` = [(text, start, end)], ``traces`` = [[(x, y, t), ...], ...]."""
    return {
        "dataset_id": "test", "image_id": "7", "annotator_id": 1,
        "caption": caption if caption is not None else " ".join(u[0] for u in utterances),
        "timed_caption": [{"utterance": u, "start_time": s, "end_time": e} for u, s, e in utterances],
        "traces": [[{"x": x, "y": y, "t": t} for x, y, t in seg] for seg in traces],
        "voice_recording": "x.ogg",
    }


# x = t / 10, y = 0.5, t = 0..10 s, split over two segments
LINEAR = [[(t / 10, 0.5, float(t)) for t in range(0, 6)], [(t / 10, 0.5, float(t)) for t in range(6, 11)]]


def test_linear_trace_samples_centre_box_and_token_targets():
    rec = record([("a big", 0.0, 2.0), ("circle", 2.0, 4.0)], LINEAR)
    utt = utterance_traces(parse_narrative(rec))
    np.testing.assert_allclose(utt.samples[0, :, 0], np.linspace(0.0, 0.2, 16))
    np.testing.assert_allclose(utt.samples[:, :, 1], 0.5)
    np.testing.assert_allclose(utt.centers, [[0.1, 0.5], [0.3, 0.5]])       # linear → midpoint
    np.testing.assert_allclose(utt.boxes, [[0.0, 0.5, 0.2, 0.5], [0.2, 0.5, 0.4, 0.5]], atol=1e-12)
    assert utt.valid.tolist() == [True, True]
    # M = 3 tokens, N = 2 utterances: token positions 1/2 + (j/3)(1 - 1/2) = .667, .833, 1 vs 0.5, 1
    al = align_tokens_to_trace(rec, ["▁a", "▁big", "▁circle"])
    assert al.utterance_index.tolist() == [0, 1, 1]
    np.testing.assert_allclose(al.points, [[0, 0.5, 0.2, 0.5], [0.2, 0.5, 0.4, 0.5], [0.2, 0.5, 0.4, 0.5]], atol=1e-12)
    assert al.valid.all()
    assert al.samples.shape == (3, 16, 2)
    np.testing.assert_allclose(al.samples[1], utt.samples[1])


def test_trapezoid_time_average_not_plain_mean():
    # x(t) = 0.2 + 0.4 t on [0, 1], then 0.6 on [1, 3]: ∫ = 0.4 + 1.2 = 1.6 → centre 1.6 / 3
    rec = record([("thing", 0.0, 3.0)], [[(0.2, 0.5, 0.0), (0.6, 0.5, 1.0), (0.6, 0.5, 3.0)]])
    utt = utterance_traces(parse_narrative(rec))
    assert utt.centers[0, 0] == pytest.approx(1.6 / 3)
    assert utt.samples[0, :, 0].mean() == pytest.approx(8.4 / 16)               # what a plain mean would give


def test_start_equals_end_uses_plain_mean_and_degenerate_box():
    rec = record([("here", 3.0, 3.0)], LINEAR)
    utt = utterance_traces(parse_narrative(rec))
    np.testing.assert_allclose(utt.samples[0, :, 0], 0.3)
    np.testing.assert_allclose(utt.centers[0], [0.3, 0.5])
    np.testing.assert_allclose(utt.boxes[0], [0.3, 0.5, 0.3, 0.5])
    # start > end: the official span check (t_end - t_start < 1e-5) also takes the plain mean
    rev = utterance_traces(parse_narrative(record([("back", 4.0, 2.0)], LINEAR)))
    np.testing.assert_allclose(rev.centers[0], [0.3, 0.5])
    np.testing.assert_allclose(rev.boxes[0], [0.2, 0.5, 0.4, 0.5])


def test_single_point_trace_is_skipped_and_counted(tmp_path):
    one = record([("a dog", 0.0, 1.0)], [[(0.5, 0.5, 0.3)]])
    none = record([("a cat", 0.0, 1.0)], [])
    ok = record([("a cow", 0.0, 1.0)], LINEAR)
    p = tmp_path / "ln.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in (one, none, ok)) + "\n")
    assert not utterance_traces(parse_narrative(one)).valid.any()
    al = align_tokens_to_trace(one, 2)
    assert not al.valid.any() and (al.utterance_index == -1).all() and (al.points == 0).all()
    skips = SkipCounter("t")
    kept = load_localized_narratives(p, skips=skips)
    assert [n.caption for n in kept] == ["a cow"]
    assert skips["skipped: no trace (<= 1 point)"] == 2
    assert len(load_localized_narratives(p, require_trace=False)) == 3


def test_out_of_band_points_are_extrapolated_then_clipped_in_targets():
    # x = t on t ∈ [-0.2, 1.0] (starts left of the image), utterance [1, 2] lies past the trace's end
    rec = record([("left", 0.0, 1.0), ("gone", 1.0, 2.0)], [[(-0.2, 0.5, -0.2), (1.0, 0.5, 1.0)]])
    utt = utterance_traces(parse_narrative(rec))
    np.testing.assert_allclose(utt.boxes[1], [1.0, 0.5, 2.0, 0.5])             # linear extrapolation
    np.testing.assert_allclose(utt.centers[1], [1.5, 0.5])
    al = align_tokens_to_trace(rec, 2)
    np.testing.assert_allclose(al.points[1], [1.0, 0.5, 1.0, 0.5])             # clipped to [0, 1]
    assert al.samples.min() >= 0 and al.samples.max() <= 1
    notes = SkipCounter("t")
    parse_narrative(rec, "f.jsonl", 1, notes)
    assert notes["traces leaving the image (kept; targets clipped to [0,1])"] == 1


def test_centre_outside_image_or_empty_text_makes_utterance_invalid():
    # utterance 1 happens while the mouse is left of the image (x < 0): centre <= 1e-5 → invalid
    trace = [[(-0.5, 0.5, 0.0), (-0.5, 0.5, 1.0), (0.5, 0.5, 1.1), (0.5, 0.5, 3.0)]]
    rec = record([("a", 1.5, 2.0), ("off", 0.0, 1.0), ("  ", 2.0, 3.0), ("b", 2.0, 3.0)], trace)
    utt = utterance_traces(parse_narrative(rec))
    assert utt.valid.tolist() == [True, False, False, True]
    # N_v = 2: valid utterances at 1/2 and 1; 4 tokens → [0, 0(tie → earlier), 3, 3]
    assert align_tokens_to_trace(rec, 4).utterance_index.tolist() == [0, 0, 3, 3]


def test_integer_times_equal_float_times():
    as_int = record([("a b", 0, 2), ("c", 2, 4)], [[(t / 10, 0.5, t) for t in range(11)]])
    as_float = record([("a b", 0.0, 2.0), ("c", 2.0, 4.0)], [[(t / 10, 0.5, float(t)) for t in range(11)]])
    a, b = align_tokens_to_trace(as_int, 3), align_tokens_to_trace(as_float, 3)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.utterance_index, b.utterance_index)


@pytest.mark.parametrize("m, valid, expected", [
    (4, [1, 1], [0, 0, 1, 1]),            # positions .625 .75 .875 1 vs .5 1 (tie at .75 → first)
    (2, [1, 1, 1, 1], [1, 3]),            # .625 (tie between .5/.75 → first) and 1.0
    (1, [1, 1, 1], [2]),                  # a single token sits at 1 → last utterance
    (5, [1], [0, 0, 0, 0, 0]),
    (3, [0, 1, 0, 1], [1, 3, 3]),         # invalid utterances are never chosen
    (3, [0, 0], [-1, -1, -1]),            # nothing valid
    (0, [1], []),
])
def test_relative_position_matching(m, valid, expected):
    assert token_to_utterance(m, np.array(valid, bool)).tolist() == expected


def test_point_target_center_and_unsorted_segments():
    rec = record([("a b", 0.0, 2.0), ("c", 2.0, 4.0)], LINEAR)
    shuffled = record([("a b", 0.0, 2.0), ("c", 2.0, 4.0)], [LINEAR[1][::-1], LINEAR[0]])
    al = align_tokens_to_trace(rec, 3, point_target="center")
    np.testing.assert_allclose(al.points, [[0.1, 0.5, 0.1, 0.5], [0.3, 0.5, 0.3, 0.5], [0.3, 0.5, 0.3, 0.5]])
    np.testing.assert_allclose(align_tokens_to_trace(shuffled, 3).points, align_tokens_to_trace(rec, 3).points)
    with pytest.raises(ValueError, match="point_target"):
        align_tokens_to_trace(rec, 3, point_target="corner")


def _official_trace2coord(traces, timed_caption, num_points=16):
    """Transcription of scenic pixel_llm ``tools/build_ln_tfrecord.py::trace2coord`` (numpy 2: trapezoid)."""
    from scipy import interpolate
    t_arr = np.array([p["t"] for p in traces]); x_arr = np.array([p["x"] for p in traces])
    y_arr = np.array([p["y"] for p in traces])
    s = np.argsort(t_arr, kind="stable"); t_arr, x_arr, y_arr = t_arr[s], x_arr[s], y_arr[s]
    out = []
    for dic in timed_caption:
        fx = interpolate.interp1d(t_arr, x_arr, fill_value="extrapolate")
        fy = interpolate.interp1d(t_arr, y_arr, fill_value="extrapolate")
        t = np.linspace(dic["start_time"], dic["end_time"], num=num_points)
        xv, yv = fx(t), fy(t)
        if t[-1] - t[0] < 1e-5:
            ix, iy = np.mean(xv), np.mean(yv)
        else:
            ix, iy = np.trapezoid(xv, t) / (t[-1] - t[0]), np.trapezoid(yv, t) / (t[-1] - t[0])
        out.append(([ix, iy], [xv.min(), yv.min(), xv.max(), yv.max()]))
    return out


def test_parity_with_official_trace2coord_on_random_narratives():
    rng = np.random.default_rng(0)
    for _ in range(5):
        n_pts = rng.integers(2, 40)
        t = np.sort(rng.uniform(0, 10, n_pts))
        pts = [(float(x), float(y), float(tt)) for x, y, tt in zip(rng.uniform(-0.1, 1.1, n_pts),
                                                                   rng.uniform(-0.1, 1.1, n_pts), t)]
        starts = np.sort(rng.uniform(-1, 11, 6))
        utts = [(f"w{i}", float(s), float(s + rng.uniform(0, 1.5))) for i, s in enumerate(starts)]
        rec = record(utts, [pts[: n_pts // 2], pts[n_pts // 2:]])
        flat = [p for seg in rec["traces"] for p in seg]
        ref = _official_trace2coord(flat, rec["timed_caption"])
        ours = utterance_traces(parse_narrative(rec))
        np.testing.assert_allclose(ours.centers, [c for c, _ in ref])
        np.testing.assert_allclose(ours.boxes, [b for _, b in ref])


def test_reader_streams_real_schema(tmp_path):
    p = tmp_path / "coco_val_localized_narratives.jsonl"
    recs = [record([("In this", 0, 0.4), ("image", 0.4, 1)], LINEAR), record([("x", 1, 2)], LINEAR)]
    recs[1]["image_id"] = "000123"
    p.write_text(json.dumps(recs[0]) + "\n\n" + json.dumps(recs[1]) + "\n")
    got = list(iter_localized_narratives(p))
    assert [g.image_id for g in got] == ["7", "000123"]
    assert got[1].coco_file_name == "000000000123.jpg"
    assert parse_narrative(record([("x", 0, 1)], LINEAR) | {"image_id": "0a1b2c3d"}).coco_file_name == "0a1b2c3d.jpg"
    assert got[0].timed_caption[1].start_time == 0.4 and got[0].annotator_id == 1
    assert got[0].trace_points().shape == (11, 3)
    assert got[0].source.endswith(":1") and got[1].source.endswith(":3")
