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


# ------------------------------------------------------------------------ hostile files (one test per class)
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from pixelllm.data.coco import load_coco

REPO = Path(__file__).resolve().parents[1]


def run_capped(code: str, mem_bytes: int = 1 << 30) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose address space is capped (RLIMIT_AS): a case that would make
    pycocotools or PIL crash or allocate without bound ends the child, never the test process."""
    prog = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({mem_bytes}, {mem_bytes}))\n{code}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def coco_file(path, annotations, images=None):
    images = images if images is not None else [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}))
    return path


def ann(aid=7, image_id=1, bbox=(1, 1, 4, 4), segmentation=None):
    a = {"id": aid, "image_id": image_id, "category_id": 1, "bbox": list(bbox), "area": 16, "iscrowd": 0}
    a["segmentation"] = segmentation if segmentation is not None else [[1, 1, 5, 1, 5, 5, 1, 5]]
    return a


@pytest.mark.parametrize("coord, why", [("float('nan')", "expected a finite number, got nan"),
                                        ("float('inf')", "expected a finite number, got inf"),
                                        ("1e12", "coordinate 1000000000000.0 lies far outside the 20×10 image")])
def test_polygon_that_crashes_pycocotools_is_refused_before_it(tmp_path, coord, why):
    """NaN / inf / huge polygon coordinates make pycocotools' rasteriser crash or allocate without bound:
    refused with the file, annotation id and coordinate named — in a child capped at 1 GB."""
    p = tmp_path / "instances.json"
    code = f"""
import json
from pixelllm.data.coco import load_coco, decode_segmentation
from pixelllm.data.errors import DataFormatError
poly = [1.0, 1.0, 5.0, 1.0, {coord}, 5.0, 1.0, 5.0]
a = {{"id": 7, "image_id": 1, "bbox": [1, 1, 4, 4], "segmentation": [poly]}}
open({str(p)!r}, "w").write(json.dumps({{"images": [{{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}}],
                                        "annotations": [a]}}))
for f in (lambda: load_coco({str(p)!r}), lambda: decode_segmentation([poly], 10, 20, {str(p)!r}, "ann 7")):
    try:
        f()
        print("ACCEPTED")
    except DataFormatError as e:
        print("ERROR", e)
"""
    r = run_capped(code)
    assert r.returncode == 0, f"child died (rc {r.returncode}): {r.stderr[-2000:]}"
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(x.startswith("ERROR") for x in lines), r.stdout
    assert f"instances.json: field 'annotations[0] (id 7).segmentation[0][4]': {why}" in lines[0]
    assert "instances.json: field 'ann 7[0][4]'" in lines[1]


def test_rle_that_pycocotools_would_misread_is_refused(tmp_path):
    from pycocotools import mask as mask_utils

    from pixelllm.data.segmentation import check_segmentation, rle_string_counts

    m = np.zeros((10, 20), np.uint8)
    m[2:7, 3:15] = 1
    good = mask_utils.encode(np.asfortranarray(m))
    runs = rle_string_counts(good["counts"])
    assert sum(runs) == 200 and runs[:2] == [32, 5]                       # column-major: 3 empty columns + 2
    cases = [
        ({"size": [10, 20], "counts": "garbage!!"}, "counts': invalid compressed RLE: character 'r' at position 2"),
        ({"size": [10, 20], "counts": "05"}, "counts': runs sum to 5, not h·w"),   # decodes to [0, 5]: 195 pixels unset
        ({"size": [10, 20], "counts": "0O"}, "counts': run 1 is negative (-1)"),
        ({"size": [10, 20], "counts": good["counts"].decode()[:-1] + "0l"}, "counts'"),
        ({"size": [10, 20], "counts": "P"}, "the string ends inside a number"),
        ({"size": [12, 20], "counts": good["counts"].decode()}, "RLE size [12, 20] (h, w) differs from the image's [10, 20]"),
        ({"size": [10, 20], "counts": [100, 50]}, "runs sum to 150, not h·w = 10·20 = 200"),
        ({"size": [10, 20], "counts": [150, -5, 55]}, "run 1 is negative (-5)"),
        ({"size": [10, 20], "counts": [100, 50.5, 49.5]}, "counts[1]': expected an integer"),
        ({"size": [10, 20]}, "counts': missing"),
        ({"size": "10x20", "counts": [200]}, "size': expected [height, width] integers"),
    ]
    for seg, msg in cases:
        p = coco_file(tmp_path / "inst.json", [ann(aid=9, segmentation=seg)])
        with pytest.raises(DataFormatError, match=r"inst\.json: field 'annotations\[0\] \(id 9\)\.segmentation") as e:
            load_coco(p)
        assert msg in str(e.value), (seg, str(e.value))
    clean, notes = check_segmentation(good, 10, 20)                       # a valid RLE passes unchanged
    assert clean["counts"] == good["counts"] and notes == []
    assert decode_segmentation_equals(good, m)


def decode_segmentation_equals(seg, m) -> bool:
    from pixelllm.data.coco import decode_segmentation

    return bool((decode_segmentation(seg, *m.shape) == m).all())


def test_invalid_polygons_and_degenerate_boxes_are_counted_skips(tmp_path, caplog):
    """Official loaders skip these: polygons with < 3 points or an odd coordinate count (detectron2), boxes
    with width or height <= 0 (torchvision / DETR keep x1 > x0 and y1 > y0). Counted and reported, and a ref
    to a dropped annotation is a counted skip too."""
    from pixelllm.data.refcoco import RefCOCO

    anns = [ann(1), ann(2, segmentation=[[1, 1, 5, 1, 5]]), ann(3, segmentation=[[1, 1, 5, 1], [1, 1, 5, 1, 5, 5]]),
            ann(4, bbox=(5, 5, -3, 4)), ann(5, bbox=(5, 5, 3, 0))]
    skips = SkipCounter("t")
    coco = load_coco(coco_file(tmp_path / "inst.json", anns), skips)
    assert sorted(coco.anns) == [1, 3] and coco.anns[3]["segmentation"] == [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]]
    assert coco.dropped == {2: "skipped: annotation without a valid polygon",
                            4: "skipped: box with width or height <= 0", 5: "skipped: box with width or height <= 0"}
    assert skips.counts == {"dropped: polygon with an odd number of coordinates": 1, "dropped: polygon with < 3 points": 1,
                            "skipped: annotation without a valid polygon": 1, "skipped: box with width or height <= 0": 2}
    d = tmp_path / "refcoco"
    d.mkdir()
    coco_file(d / "instances.json", anns)
    refs = [{"ref_id": k, "ann_id": k, "image_id": 1, "split": "val", "sentences": [{"sent": f"thing {k}", "sent_id": k}]}
            for k in (1, 2, 4)]
    (d / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with caplog.at_level(logging.WARNING, logger="pixelllm.data"):
        ref = RefCOCO(tmp_path)
    assert [r["ref_id"] for r in ref.records] == [1]
    assert ref.skips["skipped: ref of a dropped annotation (skipped: box with width or height <= 0)"] == 1
    assert "ref of a dropped annotation" in caplog.text and "box with width or height <= 0: 2" in caplog.text


def test_duplicate_ids_are_errors_naming_both_places(tmp_path):
    from pixelllm.data.coco import load_coco_captions
    from pixelllm.data.refcoco import load_mdetr_refexp, load_refs

    img = {"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}
    with pytest.raises(DataFormatError, match=r"inst\.json: field 'images\[1\]\.id': duplicate image id 1 \(first at images\[0\]\)"):
        load_coco(coco_file(tmp_path / "inst.json", [], images=[img, dict(img)]))
    with pytest.raises(DataFormatError, match=r"field 'annotations\[1\]\.id': duplicate annotation id 7 \(first at annotations\[0\]\)"):
        load_coco(coco_file(tmp_path / "inst.json", [ann(7), ann(7)]))
    caps = tmp_path / "captions.json"
    caps.write_text(json.dumps({"images": [img], "annotations": [{"id": 3, "image_id": 1, "caption": "a"},
                                                                 {"id": 3, "image_id": 1, "caption": "b"}]}))
    with pytest.raises(DataFormatError, match=r"captions\.json: field 'annotations\[1\]\.id': duplicate annotation id 3"):
        load_coco_captions(caps)
    refs = [{"ref_id": 5, "ann_id": 1, "image_id": 1, "split": "val", "sentences": [{"sent": "x", "sent_id": 1}]},
            {"ref_id": 5, "ann_id": 2, "image_id": 1, "split": "val", "sentences": [{"sent": "y", "sent_id": 2}]}]
    (tmp_path / "refs.p").write_bytes(pickle.dumps(refs))
    with pytest.raises(DataFormatError, match=r"refs\.p: field '\[1\]\.ref_id': duplicate ref id 5 \(first at \[0\]\)"):
        load_refs(tmp_path / "refs.p")
    refs[1]["ref_id"], refs[1]["sentences"][0]["sent_id"] = 6, 1
    (tmp_path / "refs.p").write_bytes(pickle.dumps(refs))
    with pytest.raises(DataFormatError, match=r"field '\[1\]\.sentences\[0\]\.sent_id': duplicate sentence id 1"):
        load_refs(tmp_path / "refs.p")
    mdetr = tmp_path / "final_refcoco_val.json"
    im = {"id": 4, "file_name": "a.jpg", "width": 20, "height": 10, "caption": "x", "original_img_id": 1}
    mdetr.write_text(json.dumps({"images": [im, dict(im)], "annotations": [{"id": 1, "image_id": 4, "bbox": [0, 0, 2, 2]}]}))
    with pytest.raises(DataFormatError, match=r"field 'images\[1\]\.id': duplicate image \(expression\) id 4"):
        load_mdetr_refexp(mdetr)
    regs = [{"region_id": 1, "image_id": 1, "phrase": "a", "x": 1, "y": 1, "width": 5, "height": 5},
            {"region_id": 1, "image_id": 1, "phrase": "b", "x": 2, "y": 1, "width": 5, "height": 5}]
    with pytest.raises(DataFormatError, match=r"rd\.json: field '\[0\]\.regions\[1\]\.region_id': duplicate region id 1 "
                                              r"\(first at \[0\]\.regions\[0\]\)"):
        load_visual_genome(*_vg_files(tmp_path, regs))
    (tmp_path / "im.json").write_text(json.dumps([{"image_id": 1, "width": 9, "height": 9}] * 2))
    with pytest.raises(DataFormatError, match=r"im\.json: field '\[1\]\.image_id': duplicate image id 1"):
        load_visual_genome(tmp_path / "rd.json", tmp_path / "im.json")


def test_wrong_labels_are_refused(tmp_path):
    """A ref whose annotation lies on another image, a sentence that is None, an annotation without
    image_id: each is an error naming file, record and field (never a box on the wrong image, never the
    expression "None", never a pycocotools KeyError)."""
    from pixelllm.data.refcoco import RefCOCO

    d = tmp_path / "refcoco"
    d.mkdir()
    images = [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10},
              {"id": 2, "file_name": "b.jpg", "width": 20, "height": 10}]
    coco_file(d / "instances.json", [ann(7, image_id=2)], images=images)
    refs = [{"ref_id": 3, "ann_id": 7, "image_id": 1, "split": "val", "sentences": [{"sent": "x", "raw": "x"}]}]
    (d / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(DataFormatError, match=r"refs\(unc\)\.p: field '\[0\]\.image_id': ref 3 is on image 1 but its "
                                              r"annotation 7 is on image 2"):
        RefCOCO(tmp_path)
    refs[0].update(image_id=2, sentences=[{"sent": None, "raw": "x"}])
    (d / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(DataFormatError, match=r"field '\[0\]\.sentences\[0\]\.sent': expected a string, got None"):
        RefCOCO(tmp_path)
    a = ann(7)
    del a["image_id"]
    with pytest.raises(DataFormatError, match=r"inst\.json: field 'annotations\[0\] \(id 7\)\.image_id': missing"):
        load_coco(coco_file(tmp_path / "inst.json", [a]))
    with pytest.raises(DataFormatError, match=r"field 'annotations\[0\] \(id 7\)\.image_id': image 9 not in 'images'"):
        load_coco(coco_file(tmp_path / "inst.json", [ann(7, image_id=9)]))
    with pytest.raises(DataFormatError, match=r"field 'annotations\[0\] \(id 7\)\.segmentation\[0\]\[2\]': expected a number, "
                                              r"got '5'"):                     # numpy alone would read it as 5.0
        load_coco(coco_file(tmp_path / "inst.json", [ann(7, segmentation=[[1, 1, "5", 1, 5, 5]])]))


class _Tok:
    eos_token_id = 1

    def __call__(self, text):
        return {"input_ids": [5] * len(text.split()) + [1]}


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.jpg", "sub/../../outside.jpg", "C:\\\\x.jpg"])
def test_file_name_outside_the_image_root_is_refused(tmp_path, name):
    from pixelllm.data.coco import load_coco_captions
    from pixelllm.data.datasets import RefExpDataset

    img = {"id": 1, "file_name": name, "width": 20, "height": 10}
    with pytest.raises(DataFormatError, match=r"inst\.json: field 'images\[0\]\.file_name': image file name must be a "
                                              r"relative path inside the image folder"):
        load_coco(coco_file(tmp_path / "inst.json", [], images=[img]))
    caps = tmp_path / "captions.json"
    caps.write_text(json.dumps({"images": [img], "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]}))
    with pytest.raises(DataFormatError, match=r"captions\.json: field 'images\[0\]\.file_name'"):
        load_coco_captions(caps)
    rec = {"image_id": 1, "file_name": name, "width": 20, "height": 10, "expression": "x", "bbox": [0, 0, 2, 2],
           "split": "val"}
    ds = RefExpDataset([rec], tmp_path / "images", _Tok(), image_size=16)
    with pytest.raises(DataFormatError, match=r"RefExpDataset record image_id 1: field 'file_name'"):
        ds[0]


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w×h 8-bit grey pixels and carries almost no data (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_bad_image_files_name_the_file(tmp_path):
    """Truncated, too large (decompression bomb: ours and PIL's limit) and wrong-size images: each a
    DataFormatError naming the file — the bombs in a child capped at 1 GB."""
    from pixelllm.data.datasets import RegionCaptionDataset

    (tmp_path / "bomb_ours.png").write_bytes(_png_header_only(9000, 9000))      # 81 M px > our 67 M limit
    (tmp_path / "bomb_pil.png").write_bytes(_png_header_only(30000, 30000))     # 900 M px > PIL's own error level
    code = f"""
from pixelllm.data.images import open_image
from pixelllm.data.errors import DataFormatError
for name in ("bomb_ours.png", "bomb_pil.png"):
    try:
        open_image({str(tmp_path)!r} + "/" + name)
        print("ACCEPTED")
    except DataFormatError as e:
        print("ERROR", e)
"""
    r = run_capped(code)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    assert "bomb_ours.png: image of 9000×9000 = 81000000 pixels exceeds the limit of 67108864" in out[0]
    assert "bomb_pil.png: refused as a decompression bomb: Image size (900000000 pixels)" in out[1]
    Image.new("RGB", (20, 10), (200, 10, 10)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    recs = [{"image_id": k, "file_name": f, "width": 20, "height": 10,
             "regions": [{"region_id": k, "phrase": "x", "bbox": [0, 0, 2, 2]}]} for k, f in enumerate(["a.png", "cut.png"])]
    ds = RegionCaptionDataset(recs, tmp_path, _Tok(), image_size=16)
    assert ds[0]["orig_sizes"].tolist() == [10, 20]
    with pytest.raises(DataFormatError, match=r"cut\.png: cannot read image \(image_id 1, RegionCaptionDataset"):
        ds[1]
    recs[0]["height"] = 12                                                       # declared 20×12, file 20×10
    with pytest.raises(DataFormatError, match=r"a\.png: field 'width/height': the file is 20×10 \(w×h\) but its "
                                              r"annotation \(image_id 0.*\) declares 20×12"):
        RegionCaptionDataset(recs, tmp_path, _Tok(), image_size=16)[0]


def test_find_missing_images_up_front_through_subsets_and_views(tmp_path):
    from torch.utils.data import Subset

    from pixelllm.data.datasets import RegionCaptionDataset, find_missing_images, require_images

    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    recs = [{"image_id": k, "file_name": f, "regions": [{"region_id": k, "phrase": "x", "bbox": [0, 0, 2, 2]}]}
            for k, f in enumerate(["a.jpg", "gone1.jpg", "gone2.jpg", "a.jpg"])]
    ds = RegionCaptionDataset(recs, tmp_path, _Tok(), image_size=16)

    class View:                         # a wrapper with .dataset (like SupervisionView)
        def __init__(self, d):
            self.dataset = d

    class Mix:                          # a mixture with .datasets (like MixtureDataset)
        datasets = {"a": Subset(ds, [0, 2]), "b": View(Subset(Subset(ds, [3, 1]), [1]))}

    assert find_missing_images(ds) == [tmp_path / "gone1.jpg", tmp_path / "gone2.jpg"]
    assert find_missing_images(Subset(ds, [0, 3])) == []
    assert find_missing_images(Mix()) == [tmp_path / "gone2.jpg", tmp_path / "gone1.jpg"]
    with pytest.raises(FileNotFoundError, match=r"train: 2 image file\(s\) missing, e\.g\. .*gone1\.jpg, .*gone2\.jpg$"):
        require_images(ds, "train")
    require_images(Subset(ds, [0]), "train")


def test_non_utf8_and_truncated_files_name_file_and_line(tmp_path):
    from pixelllm.data.coco import load_coco_captions
    from pixelllm.data.errors import read_json_lines
    from pixelllm.data.tokenizer import load_tokenizer, train_tokenizer

    p = tmp_path / "captions.json"
    p.write_bytes(b'{"images": [],\n "annotations": [{"caption": "caf\xe9"}]}')
    with pytest.raises(DataFormatError, match=r"captions\.json:2: not UTF-8 text \(byte b'\\xe9' at column 34\)"):
        load_coco_captions(p)
    ln = tmp_path / "ln.jsonl"
    ln.write_bytes(json.dumps(ln_record()).encode() + b"\n" + b'{"caption": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"ln\.jsonl:2: not UTF-8 text"):
        list(read_json_lines(ln))
    with pytest.raises(DataFormatError, match=r"ln\.jsonl:2: not UTF-8"):
        load_localized_narratives(ln)
    tok_dir = tmp_path / "tok"
    train_tokenizer(["a red circle", "a blue square"] * 20, tok_dir, vocab_size=300)
    raw = (tok_dir / "tokenizer.json").read_bytes()
    (tok_dir / "tokenizer.json").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match=r"tok/tokenizer\.json:\d+: malformed JSON"):
        load_tokenizer(tok_dir)
    (tok_dir / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(DataFormatError, match=r"tokenizer\.json: not a tokenizer the library can load"):
        load_tokenizer(tok_dir)
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "nowhere")


def test_evaluation_on_an_empty_split_is_an_error():
    from pixelllm.data.datasets import RefExpDataset
    from pixelllm.tasks.densecap import evaluate_densecap
    from pixelllm.tasks.referring.data import eval_batches

    rec = {"image_id": 1, "file_name": "a.jpg", "width": 20, "height": 10, "expression": "x", "bbox": [0, 0, 2, 2],
           "split": "val", "ref_id": 1}
    sets = {"val": RefExpDataset([rec], ".", _Tok(), image_size=16), "testA": RefExpDataset([], ".", _Tok(), image_size=16)}
    with pytest.raises(ValueError, match=r"evaluate_referring\[testA\]: empty split \(0 expressions"):
        for _ in eval_batches({"testA": sets["testA"]}, 4, None, "cpu", False, "evaluate_referring", "refer"):
            pass
    with pytest.raises(ValueError, match=r"evaluate_referring\[val\]: empty split \(1 expressions, max_per_split=0\)"):
        next(eval_batches(sets, 4, 0, "cpu", False, "evaluate_referring", "refer"))
    with pytest.raises(ValueError, match="no split to evaluate"):
        next(eval_batches({}, 4, None, "cpu", False, "evaluate_referring", "refer"))
    with pytest.raises(ValueError, match="evaluate_densecap: no image was predicted"):
        evaluate_densecap([], [{"image_id": "1", "boxes": [[0, 0, 2, 2]], "captions": ["x"]}], meteor_fn=lambda p: [0.0] * len(p))


def test_generator_keeps_an_existing_world_and_refuses_empty_splits(tmp_path, caplog):
    from data_prep.make_synthetic import main
    from pixelllm.data.synthetic import clear_world, generate

    out = tmp_path / "world"
    generate(out, n_scenes=10, seed=1, workers=1, progress=False)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=r"world is not empty \(it holds a world\); pass --overwrite"):
        generate(out, n_scenes=8, seed=2, workers=1, progress=False)
    with pytest.raises(SystemExit) as e:
        main(["--out", str(out), "--n-scenes", "8", "--workers", "1"])
    assert e.value.code == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before      # nothing touched
    (out / "images" / "mine.png").write_bytes(b"user file")
    with caplog.at_level(logging.WARNING, logger="pixelllm.data"):
        st = generate(out, n_scenes=8, seed=2, workers=1, progress=False, overwrite=True)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:012d}.jpg" for i in range(1, 9)] + ["mine.png"]
    assert st["splits"] == {"train": 6, "val": 1, "test": 1} and "kept 1 file(s) that are not part of a world" in caplog.text
    # every file generate() writes is one clear_world owns (a new kind of world file must be registered there)
    assert clear_world(out) == [out / "images" / "mine.png"] and sorted(out.iterdir()) == [out / "images"]
    with pytest.raises(ValueError, match=r"a world of 5 scenes .* \{'train': 4, 'val': 0, 'test': 1\} images per split: "
                                         r"the val split\(s\) would be empty; use at least 8 scenes"):
        generate(tmp_path / "tiny", n_scenes=5, workers=1, progress=False)
    assert not (tmp_path / "tiny").exists()
    generate(tmp_path / "no_val", n_scenes=5, split_fractions=(0.8, 0.0, 0.2), workers=1, progress=False)


def test_muse_file_with_a_hostile_polygon_or_path_is_refused(tmp_path):
    """The MUSE-like reader shares the COCO segmentation and file-name checks."""
    from pixelllm.data.muse import load_muse

    def rec(**over):
        t = {"id": 10, "category_id": 1, "category_name": "circle", "rephrased_name": "the red circle",
             "phrase_span": [0, 14], "bbox": [1.0, 1.0, 2.0, 2.0], "area": 4,
             "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]}
        r = {"id": 1, "image_id": 1, "file_name": "000000000001.jpg", "height": 8, "width": 8,
             "question": "segment every red shape", "answer": "the red circle", "template": "colour", "answers": [t]}
        t.update(over.pop("target", {}))
        r.update(over)
        return r

    p = tmp_path / "synthetic_val_muse.json"
    p.write_text(json.dumps({"info": {}, "questions": [rec(target={"segmentation": [[1, 1, 3, 1, 3e12, 3, 1, 3]]})]}))
    with pytest.raises(DataFormatError, match=r"synthetic_val_muse\.json: field 'questions\[0\] \(id 1\)\.answers\[0\]\."
                                              r"segmentation\[0\]\[4\]': coordinate 3000000000000\.0 lies far outside"):
        load_muse(p)
    p.write_text(json.dumps({"info": {}, "questions": [rec(file_name="../../secret.jpg")]}))
    with pytest.raises(DataFormatError, match=r"field 'questions\[0\] \(id 1\)\.file_name': image file name must be"):
        load_muse(p)
    p.write_text(json.dumps({"info": {}, "questions": [rec()]}))
    assert load_muse(p)[0]["answers"][0]["segmentation"] == [[1, 1, 3, 1, 3, 3, 1, 3]]


def test_teacher_forced_eval_refuses_an_empty_split():
    # an empty split used to score ce = 0.0 (a perfect loss) without a word
    import torch

    from pixelllm.engine.evaluate import teacher_forced_eval

    with pytest.raises(ValueError, match="0 samples with no target token"):
        teacher_forced_eval(torch.nn.Linear(1, 1), [], batch_size=4)
