"""One test per class of bad input: a clear exception naming file / line / field, or a counted skip
that is reported at the end — never a crash mid-loop, never silent data loss."""
import json
import logging
import pickle

import numpy as np
import pytest
from PIL import Image

from pixelllm.data.errors import DataFormatError, SkipCounter
from pixelllm.data.localized_narratives import (
    align_tokens_to_trace, iter_localized_narratives, load_localized_narratives, parse_narrative, utterance_traces,
)
from pixelllm.data.visual_genome import load_visual_genome, load_vg_coco_style


def ln_record(**over):
    rec = {"dataset_id": "d", "image_id": "5", "annotator_id": 3, "caption": "a red circle",
           "timed_caption": [{"utterance": "a red", "start_time": 0.0, "end_time": 1.0},
                             {"utterance": "circle", "start_time": 1.0, "end_time": 2.0}],
           "traces": [[{"x": 0.1 * k, "y": 0.5, "t": 0.25 * k} for k in range(9)]],
           "voice_recording": "v.ogg"}
    rec.update(over)
    return rec


def write_jsonl(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_malformed_json_line_names_file_and_line(tmp_path):
    p = write_jsonl(tmp_path / "ln.jsonl", [ln_record(), ln_record(), '{"image_id": "7", "caption": "oops"'])
    with pytest.raises(DataFormatError, match=r"ln\.jsonl:3: malformed JSON") as e:
        list(iter_localized_narratives(p))
    assert e.value.line == 3 and e.value.path == str(p)


def test_missing_field_names_the_field(tmp_path):
    bad = ln_record()
    del bad["timed_caption"][1]["start_time"]
    p = write_jsonl(tmp_path / "ln.jsonl", [ln_record(), bad])
    with pytest.raises(DataFormatError, match=r"ln\.jsonl:2: field 'timed_caption\[1\]\.start_time': missing"):
        list(iter_localized_narratives(p))
    with pytest.raises(DataFormatError, match=r"field 'traces': missing"):
        parse_narrative({k: v for k, v in ln_record().items() if k != "traces"}, "f.jsonl", 9)


@pytest.mark.parametrize("field, value, msg", [
    ("start_time", "abc", r"field 'timed_caption\[0\]\.start_time': expected a number, got 'abc'"),
    ("start_time", True, r"expected a number, got True"),
    ("utterance", 3, r"field 'timed_caption\[0\]\.utterance': expected a string, got 3"),
])
def test_ill_typed_field_names_field_and_value(field, value, msg):
    rec = ln_record()
    rec["timed_caption"][0][field] = value
    with pytest.raises(DataFormatError, match=msg):
        parse_narrative(rec, "ln.jsonl", 17)
    rec = ln_record()
    rec["traces"][0][2]["x"] = float("nan")
    with pytest.raises(DataFormatError, match=r"ln\.jsonl:17: field 'traces\[0\]\[2\]\.x': expected a finite number"):
        parse_narrative(rec, "ln.jsonl", 17)


def test_no_trace_is_a_counted_skip_reported_at_the_end(tmp_path, caplog):
    p = write_jsonl(tmp_path / "ln.jsonl", [ln_record(traces=[]), ln_record(), ln_record(traces=[[]]),
                                            ln_record(traces=[[{"x": 0.5, "y": 0.5, "t": 1.0}]])])
    with caplog.at_level(logging.WARNING, logger="pixelllm.data"):
        kept = load_localized_narratives(p)
    assert len(kept) == 1
    assert "skipped: no trace (<= 1 point): 3" in caplog.text and "ln.jsonl:1" in caplog.text


def test_empty_utterance_is_invalid_and_its_tokens_go_to_neighbours():
    rec = ln_record(timed_caption=[{"utterance": "a", "start_time": 0.0, "end_time": 0.5},
                                   {"utterance": "", "start_time": 0.5, "end_time": 1.0},
                                   {"utterance": "circle", "start_time": 1.0, "end_time": 2.0}])
    utt = utterance_traces(parse_narrative(rec))
    assert utt.valid.tolist() == [True, False, True]
    al = align_tokens_to_trace(rec, 4)
    assert al.valid.all() and 1 not in al.utterance_index.tolist()
    # a narrative whose utterances are all empty/invalid: kept and counted (official), or skipped, counted
    none_valid = ln_record(timed_caption=[{"utterance": " ", "start_time": 0.0, "end_time": 1.0}])
    from pixelllm.data.datasets import LNTraceDataset

    narrs = [parse_narrative(none_valid), parse_narrative(ln_record())]
    ds = LNTraceDataset(narrs, ".", tokenizer=None)
    assert len(ds) == 2 and ds.skips["kept: no valid utterance (every token → utterance 0, as official)"] == 1
    ds = LNTraceDataset(narrs, ".", tokenizer=None, alignment="full_caption")
    assert len(ds) == 1 and ds.skips["skipped: no valid utterance"] == 1
    with pytest.raises(ValueError, match="alignment"):
        LNTraceDataset(narrs, ".", tokenizer=None, alignment="whole")


def test_non_monotonic_times_are_handled_as_official_and_counted():
    pts = [{"x": 0.1 * k, "y": 0.5, "t": 0.25 * k} for k in range(9)]
    shuffled = ln_record(traces=[pts[5:], pts[:5][::-1]])               # out of time order
    notes = SkipCounter("n")
    n = parse_narrative(shuffled, "ln.jsonl", 1, notes)
    assert notes["trace points out of time order (sorted, as official)"] == 1
    np.testing.assert_allclose(align_tokens_to_trace(n, 3).points, align_tokens_to_trace(ln_record(), 3).points)
    reversed_utt = ln_record(timed_caption=[{"utterance": "a red", "start_time": 1.0, "end_time": 0.0}])
    parse_narrative(reversed_utt, "ln.jsonl", 2, notes)
    assert notes["utterance start_time > end_time (kept: plain mean, as official)"] == 1
    utt = utterance_traces(parse_narrative(reversed_utt))
    np.testing.assert_allclose(utt.centers[0], [0.2, 0.5])              # mean of x(t) = 0.4 t on [0, 1]


def test_out_of_band_coordinates_are_clipped_in_targets_and_counted():
    rec = ln_record(traces=[[{"x": -0.3 + 0.2 * k, "y": 1.4 - 0.1 * k, "t": 0.25 * k} for k in range(9)]])
    notes = SkipCounter("n")
    n = parse_narrative(rec, "ln.jsonl", 1, notes)
    assert notes["traces leaving the image (kept; targets clipped to [0,1])"] == 1
    al = align_tokens_to_trace(n, 2)
    assert al.points.min() >= 0 and al.points.max() <= 1
    assert utterance_traces(n).boxes.max() > 1 and al.points.max() == 1.0


def test_missing_image_lists_the_path(tmp_path):
    from pixelllm.data.datasets import RegionCaptionDataset

    class Tok:
        eos_token_id = 1

        def __call__(self, text):
            return {"input_ids": [5] * len(text.split()) + [1]}

    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    recs = [{"image_id": 1, "file_name": "a.jpg", "regions": [{"region_id": 1, "phrase": "x", "bbox": [0, 0, 2, 2]}]},
            {"image_id": 2, "file_name": "missing.jpg", "regions": [{"region_id": 2, "phrase": "y", "bbox": [0, 0, 2, 2]}]}]
    ds = RegionCaptionDataset(recs, tmp_path, Tok(), image_size=16)
    ds[0]
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*missing\.jpg \(image_id 2"):
        ds[1]
    assert ds.missing_images() == [tmp_path / "missing.jpg"]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    recs[1]["file_name"] = "bad.jpg"
    with pytest.raises(DataFormatError, match=r"bad\.jpg: cannot read image \(image_id 2"):
        RegionCaptionDataset(recs, tmp_path, Tok(), image_size=16)[1]


def _vg_files(tmp_path, regions, width=40, height=30):
    (tmp_path / "rd.json").write_text(json.dumps([{"id": 1, "regions": regions}]))
    (tmp_path / "im.json").write_text(json.dumps([{"image_id": 1, "width": width, "height": height, "url": "x/1.jpg"}]))
    return tmp_path / "rd.json", tmp_path / "im.json"


def test_degenerate_boxes_are_skipped_with_a_count(tmp_path, caplog):
    regs = [{"region_id": 1, "image_id": 1, "phrase": "ok", "x": 1, "y": 1, "width": 5, "height": 5},
            {"region_id": 2, "image_id": 1, "phrase": "flat", "x": 1, "y": 1, "width": 5, "height": 0},
            {"region_id": 3, "image_id": 1, "phrase": "negative", "x": 1, "y": 1, "width": -3, "height": 4},
            {"region_id": 4, "image_id": 1, "phrase": "outside", "x": 50, "y": 1, "width": 5, "height": 4}]
    with caplog.at_level(logging.WARNING, logger="pixelllm.data"):
        recs = load_visual_genome(*_vg_files(tmp_path, regs))
    assert [g["region_id"] for g in recs[0]["regions"]] == [1]
    assert "skipped: box with width or height <= 0: 2" in caplog.text
    assert "skipped: box outside the image: 1" in caplog.text


def test_negative_vg_coordinates_are_clipped(tmp_path):
    regs = [{"region_id": 1, "image_id": 1, "phrase": "left edge ", "x": -3, "y": -2, "width": 10, "height": 40}]
    skips = SkipCounter("vg")
    recs = load_visual_genome(*_vg_files(tmp_path, regs), skips=skips)
    assert recs[0]["regions"] == [{"region_id": 1, "phrase": "left edge", "bbox": [0.0, 0.0, 7.0, 30.0]}]
    assert skips["clipped: box partly outside the image"] == 1


def test_malformed_whole_file_json_and_bad_fields_in_other_formats(tmp_path):
    from pixelllm.data.coco import load_coco_captions

    p = tmp_path / "captions.json"
    p.write_text('{"images": [],\n "annotations": [}')
    with pytest.raises(DataFormatError, match=r"captions\.json:2: malformed JSON"):
        load_coco_captions(p)
    p.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                             "annotations": [{"id": 1, "image_id": 1, "caption": None}]}))
    with pytest.raises(DataFormatError, match=r"field 'annotations\[0\]\.caption': expected a string, got None"):
        load_coco_captions(p)
    p.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": 5, "width": 5}],
                             "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, "w", 2], "caption": "x"}]}))
    with pytest.raises(DataFormatError, match=r"field 'annotations\[0\]\.bbox\[2\]': expected a number, got 'w'"):
        load_vg_coco_style(p)


def test_refs_pointing_at_unknown_annotation(tmp_path):
    from pixelllm.data.refcoco import RefCOCO

    d = tmp_path / "refcoco"
    d.mkdir()
    refs = [{"ref_id": 1, "ann_id": 999, "image_id": 1, "split": "train", "sentences": [{"sent": "x", "raw": "x"}]}]
    (d / "refs(unc).p").write_bytes(pickle.dumps(refs))
    (d / "instances.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
                                                  "annotations": [], "categories": []}))
    with pytest.raises(DataFormatError, match=r"refs\(unc\)\.p: field '\[0\]\.ann_id': annotation 999 not found"):
        RefCOCO(tmp_path)
    refs[0]["ann_id"] = "7"
    (d / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(DataFormatError, match=r"field '\[0\]\.ann_id': expected an integer, got '7'"):
        RefCOCO(tmp_path)
