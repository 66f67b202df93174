"""The official LN trace → token alignment, on hand-computed cases (PAPER_NOTES.md §2)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixelllm.data.errors import SkipCounter
from pixelllm.data.datasets import LNTraceDataset
from pixelllm.data.localized_narratives import (
    align_tokens_to_trace, iter_localized_narratives, load_localized_narratives, num_aligned_tokens,
    parse_narrative, token_to_utterance, unusable_reason, utterance_traces,
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
    al = align_tokens_to_trace(one, 2)                  # official: index 0, but no trace → no target
    assert not al.valid.any() and al.utterance_index.tolist() == [0, 0] and (al.points == 0).all()
    al = align_tokens_to_trace(one, 2, alignment="full_caption")
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
    (3, [0, 0], [0, 0, 0]),               # nothing valid: all distances equal → utterance 0 (official)
    (0, [1], []),
])
def test_relative_position_matching(m, valid, expected):
    assert token_to_utterance(m, np.array(valid, bool)).tolist() == expected
    other = token_to_utterance(m, np.array(valid, bool), alignment="full_caption").tolist()
    assert other == ([-1] * m if not any(valid) else expected)   # the variants differ only there


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


# ------------------------------------------------- official (default) vs "full_caption" alignment
class Words:
    """Whitespace tokenizer, EOS = 1 (ids = word length + 3): one token per word."""
    eos_token_id = 1

    def __call__(self, text):
        return {"input_ids": [len(w) + 3 for w in text.split()] + [1]}


def _image(tmp_path, iid="7", size=(100, 50)):
    Image.new("RGB", size, (128, 64, 32)).save(tmp_path / f"{int(iid):012d}.jpg")


@pytest.mark.parametrize("n, max_len, official, full", [
    (6, 4, 3, 6),            # [BOS] 3 words (EOS cut) in the release; our 3 words + EOS
    (6, 7, 6, 6),            # fits exactly: 6 words + EOS
    (6, 128, 6, 6),
    (6, None, 6, 6),
    (0, 4, 0, 0),
])
def test_num_aligned_tokens(n, max_len, official, full):
    assert num_aligned_tokens(n, max_len) == official
    assert num_aligned_tokens(n, max_len, "full_caption") == full


def test_bad_alignment_name_is_rejected():
    with pytest.raises(ValueError, match="full_caption"):
        num_aligned_tokens(3, 4, "truncated")
    with pytest.raises(ValueError, match="alignment"):
        token_to_utterance(3, [True], alignment="Official")


def test_truncation_squeezes_later_utterances_into_kept_tokens(tmp_path):
    # 6 words, 3 utterances of 2 words over x = t / 10; utterance boxes x ∈ [0, .2], [.2, .4], [.4, .6]
    rec = record([("a big", 0.0, 2.0), ("red circle", 2.0, 4.0), ("on top", 4.0, 6.0)], LINEAR)
    # official, max_target_len 4 → M = 3 words at 1/3 + (j/3)(2/3) = .56 .78 1 vs 1/3 2/3 1 → [1, 1, 2]
    assert token_to_utterance(num_aligned_tokens(6, 4), [True] * 3).tolist() == [1, 1, 2]
    # full caption: M = 6 at 1/3 + j/9 → [0, 1, 1, 1, 2, 2], cut to the first 3 → the last utterance is gone
    assert token_to_utterance(num_aligned_tokens(6, 4, "full_caption"), [True] * 3).tolist()[:3] == [0, 1, 1]
    _image(tmp_path)
    narr = parse_narrative(rec)
    off = LNTraceDataset([narr], tmp_path, Words(), image_size=100, max_target_len=4)[0]
    full = LNTraceDataset([narr], tmp_path, Words(), image_size=100, max_target_len=4, alignment="full_caption")[0]
    assert off["target_ids"].tolist() == full["target_ids"].tolist() == [4, 6, 6, 1]
    # 100×50 image, resized frame = original: corners × (100, 50, 100, 50)
    torch.testing.assert_close(off["points"], torch.tensor(
        [[20, 25, 40, 25], [20, 25, 40, 25], [40, 25, 60, 25], [0, 0, 0, 0]], dtype=torch.float32))
    torch.testing.assert_close(full["points"], torch.tensor(
        [[0, 25, 20, 25], [20, 25, 40, 25], [20, 25, 40, 25], [0, 0, 0, 0]], dtype=torch.float32))
    assert off["point_valid"].tolist() == full["point_valid"].tolist() == [True, True, True, False]
    # without truncation both alignments agree
    a = LNTraceDataset([narr], tmp_path, Words(), image_size=100, max_target_len=128)[0]
    b = LNTraceDataset([narr], tmp_path, Words(), image_size=100, max_target_len=128, alignment="full_caption")[0]
    torch.testing.assert_close(a["points"], b["points"])


def test_all_invalid_record_is_kept_with_every_token_on_utterance_0(tmp_path):
    # both utterances happen while the mouse is left of the image (x < 0) → centres <= 1e-5 → invalid;
    # utterance 0's box x ∈ [-0.5, -0.3] (clipped to 0), y ∈ [0.2, 0.4]
    trace = [[(-0.5, 0.2, 0.0), (-0.3, 0.4, 1.0), (-0.1, 0.6, 2.0)]]
    rec = record([("a dog", 0.0, 1.0), ("runs", 1.0, 2.0)], trace)
    narr = parse_narrative(rec)
    assert not utterance_traces(narr).valid.any()
    assert unusable_reason(narr) is None
    assert unusable_reason(narr, "full_caption") == "skipped: no valid utterance"
    al = align_tokens_to_trace(narr, 3)
    assert al.utterance_index.tolist() == [0, 0, 0] and al.valid.all()
    np.testing.assert_allclose(al.points, [[0, 0.2, 0, 0.4]] * 3, atol=1e-12)
    _image(tmp_path)
    ds = LNTraceDataset([narr], tmp_path, Words(), image_size=100)
    assert len(ds) == 1 and ds.skips["kept: no valid utterance (every token → utterance 0, as official)"] == 1
    s = ds[0]
    torch.testing.assert_close(s["points"], torch.tensor([[0, 10, 0, 20]] * 3 + [[0, 0, 0, 0]], dtype=torch.float32))
    assert s["point_valid"].tolist() == [True, True, True, False]
    legacy = LNTraceDataset([narr], tmp_path, Words(), image_size=100, alignment="full_caption")
    assert len(legacy) == 0 and legacy.skips["skipped: no valid utterance"] == 1
    # loading from a file follows the same rule
    p = tmp_path / "ln.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    assert len(load_localized_narratives(p)) == 1
    assert len(load_localized_narratives(p, alignment="full_caption")) == 0


def test_all_invalid_record_with_a_degenerate_trace_has_no_finite_target():
    # all trace times equal: the interpolant is undefined (nan) — the release would train on nan; we mask it
    rec = record([("a dog", 0.0, 1.0)], [[(0.2, 0.2, 0.5), (0.4, 0.4, 0.5)]])
    al = align_tokens_to_trace(rec, 2)
    assert al.utterance_index.tolist() == [0, 0] and not al.valid.any()
    assert np.isfinite(al.points).all() and (al.points == 0).all() and (al.samples == 0).all()


INF = 2 ** 16 - 1          # ``io/ops.py`` INF


def _official_token2utt(n_caption_tokens, max_text_tokens, utt_valid, bos=2, eos=1, pad=0):
    """Numpy transcription of ``DecodeLocalizedNarrativesAnnotations.__call__`` steps 1-3 (one caption).

    Tokenisation as the T5 ``string_tensor_to_indices(prepend_bos=True, append_eos=True, max_num_tokens)``:
    caption + EOS, cut/padded to ``max_text_tokens``, then BOS prepended and the last slot dropped.
    Returns (text_tokens, token2utt) over all ``max_text_tokens`` slots.
    """
    tokenized = np.array([10 + k for k in range(n_caption_tokens)] + [eos])[:max_text_tokens]
    tokenized = np.pad(tokenized, (0, max_text_tokens - len(tokenized)), constant_values=pad)
    text_tokens = np.concatenate([[bos], tokenized[:-1]])[:max_text_tokens]
    valid_utt_mask = np.asarray(utt_valid).astype(np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sampled_utt_pos = np.cumsum(valid_utt_mask) / valid_utt_mask.sum(keepdims=True)
    sampled_utt_pos = np.where(valid_utt_mask > 0, sampled_utt_pos, -np.ones_like(sampled_utt_pos))
    start = np.min(np.where(sampled_utt_pos > 0, sampled_utt_pos, np.ones_like(sampled_utt_pos) * INF))
    end = np.max(np.where(sampled_utt_pos > 0, sampled_utt_pos, -np.ones_like(sampled_utt_pos) * INF))
    valid_token_mask = ((text_tokens != pad) & (text_tokens != bos) & (text_tokens != eos)).astype(np.int32)
    token_pos = np.cumsum(valid_token_mask) / valid_token_mask.sum(keepdims=True)
    token_pos = start + token_pos * (end - start)
    token_utt_dist = (token_pos[:, None] - sampled_utt_pos[None, :]) ** 2
    return text_tokens, np.argmin(token_utt_dist, axis=-1)


def test_parity_with_official_token_mapping_on_random_cases():
    rng = np.random.default_rng(1)
    cases = [(int(rng.integers(1, 60)), int(rng.integers(4, 40)), rng.random(int(rng.integers(1, 30))) < 0.8)
             for _ in range(40)]
    cases += [(20, 8, np.zeros(5, bool)), (5, 128, np.zeros(1, bool)), (7, 8, np.ones(3, bool))]
    for n, max_len, valid in cases:
        text_tokens, ref = _official_token2utt(n, max_len, valid)
        real = text_tokens >= 10                                       # the non-special slots
        m = num_aligned_tokens(n, max_len)
        assert real.sum() == m
        np.testing.assert_array_equal(token_to_utterance(m, valid), ref[real], err_msg=f"{n=} {max_len=} {valid=}")


class WordsWithOffsets(Words):
    """:class:`Words` that also gives character offsets, as a fast tokenizer does."""
    is_fast = True

    def __call__(self, text, return_offsets_mapping=False, add_special_tokens=True):
        import re
        words = list(re.finditer(r"\S+", text))
        out = {"input_ids": [len(m.group()) + 3 for m in words] + ([1] if add_special_tokens else [])}
        if return_offsets_mapping:
            out["offset_mapping"] = [m.span() for m in words]
        return out


def test_span_alignment_gives_each_token_its_own_utterance(tmp_path):
    from pixelllm.data.localized_narratives import token_to_utterance_by_span, utterance_char_spans

    caption = "A big red circle, on top."
    spans = utterance_char_spans(caption, ["a big", "red circle,", "on top."])
    assert spans == [(0, 5), (6, 17), (18, 25)]
    offsets = [(0, 1), (2, 5), (6, 9), (10, 17), (18, 20), (21, 25)]
    assert token_to_utterance_by_span(offsets, spans, [True] * 3).tolist() == [0, 0, 1, 1, 2, 2]
    # the relative-position rule gives "big" the second utterance
    assert token_to_utterance(6, [True] * 3).tolist() == [0, 1, 1, 1, 2, 2]
    # an invalid utterance's tokens take the nearest valid one (ties → the earlier)
    assert token_to_utterance_by_span(offsets, spans, [True, False, True]).tolist() == [0, 0, 0, 2, 2, 2]
    assert token_to_utterance_by_span(offsets, spans, [False] * 3).tolist() == [-1] * 6
    assert utterance_char_spans(caption, ["a big", "blue circle"]) is None     # not the caption's words

    _image(tmp_path)
    rec = record([("a big", 0.0, 2.0), ("red circle", 2.0, 4.0), ("on top", 4.0, 6.0)], LINEAR)
    narr = parse_narrative(rec)
    ds = LNTraceDataset([narr], tmp_path, WordsWithOffsets(), image_size=100, max_target_len=128, alignment="span")
    # 100×50 image; utterance boxes x ∈ [0, .2], [.2, .4], [.4, .6] → two tokens each
    torch.testing.assert_close(ds[0]["points"][:6, [0, 2]], torch.tensor(
        [[0, 20], [0, 20], [20, 40], [20, 40], [40, 60], [40, 60]], dtype=torch.float32))
    assert ds.token_utterances(0).tolist() == [0, 0, 1, 1, 2, 2, -1]
    # truncation drops the later targets with their tokens, as full_caption does
    cut = LNTraceDataset([narr], tmp_path, WordsWithOffsets(), image_size=100, max_target_len=4, alignment="span")
    assert cut.token_utterances(0).tolist() == [0, 0, 1, -1]
    with pytest.raises(ValueError, match="fast tokenizer"):
        LNTraceDataset([narr], tmp_path, Words(), image_size=100, alignment="span")


def test_span_alignment_falls_back_to_relative_position_and_says_so(tmp_path):
    _image(tmp_path)
    rec = record([("a big", 0.0, 2.0), ("red circle", 2.0, 4.0), ("on top", 4.0, 6.0)], LINEAR,
                 caption="a large red circle on top")          # "a big" is not in the caption
    narr = parse_narrative(rec)
    ds = LNTraceDataset([narr], tmp_path, WordsWithOffsets(), image_size=100, alignment="span")
    assert ds.skips["kept: utterances not found in order in the caption (relative-position alignment used)"] == 1
    assert ds.token_utterances(0).tolist()[:-1] == token_to_utterance(6, [True] * 3, "full_caption").tolist()
