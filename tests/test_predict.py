"""pixelllm.predict: every task function on a tiny model built here (batched, any image size), coordinates
in original-image pixels for a non-square image, loading a stage from a run folder (the run's parts read
from the folder that holds the checkpoint), the JSON schema, and the command line's exit codes and
messages for bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixelllm import predict as P
from pixelllm.data.datasets import ResizePad
from conftest import small_model_overrides

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A run folder: a 12-scene synthetic world and its tokenizer (no pretrained parts: the models'
    frozen parts are random, seeded)."""
    from pixelllm.data.synthetic import generate
    from pixelllm.data.tokenizer import corpus_texts, train_tokenizer

    run = tmp_path_factory.mktemp("predict_run")
    generate(run / "data", n_scenes=12, image_size=128, seed=0, workers=1, progress=False)
    tok = train_tokenizer(corpus_texts(run / "data"), run / "tokenizer", vocab_size=400)
    return run, tok


def _cfg(name, **kw):
    from pixelllm.configs import get_config
    from pixelllm.configs.base import apply_overrides

    return apply_overrides(get_config(name, smoke=True), {"init_from": "", "model_overrides": small_model_overrides(),
                                                         **kw})


@pytest.fixture(scope="module")
def stages(world):
    """Stage objects of every task around one small PixelLLM (seeded, untrained)."""
    from pixelllm.engine.builder import build_model
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.modeling.dense_captioner import build_dense_captioner
    from pixelllm.tasks.referring import ReferringSegmenter, build_mask_head

    run, tok = world
    cfg = _cfg("ln_trace", run_dir=str(run))
    model = build_model(cfg, resolve_paths(cfg), tok, verbose=False).eval()
    # an untrained LM mostly emits <pad>: keep it to real pieces so that captions have words to check
    model.language_model.t5.generation_config.suppress_tokens = [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id]
    torch.manual_seed(0)
    seg = ReferringSegmenter(model, build_mask_head(model, adapter_depth=1, adapter_num_heads=2,
                                                    adapter_mlp_dim=32)).eval()
    dense = build_dense_captioner(model, tok, dim=32, score_thr=0.0, max_det=3).eval()
    return {"caption": P.Stage("caption", "ln_trace", model, tok, "A long image caption:"),
            "locate": P.Stage("locate", "refcoco", model, tok, "where is {expr}"),
            "segment": P.Stage("segment", "refseg", seg, tok, "where is {expr}"),
            "region": P.Stage("region", "loc_caption", model, tok, "an object of"),
            "dense": P.Stage("dense", "densecap", dense, tok, "an object of")}


@pytest.fixture(scope="module")
def images(tmp_path_factory, world):
    """A wide 200×100 PNG (a scene stretched) and a tall 90×150 grayscale JPEG."""
    run, _ = world
    d = tmp_path_factory.mktemp("imgs")
    src = Image.open(sorted((run / "data" / "images").glob("*.jpg"))[0])
    wide, tall = d / "wide.png", d / "tall.jpg"
    src.resize((200, 100)).save(wide)
    src.convert("L").resize((90, 150)).save(tall)
    return wide, tall


# ------------------------------------------------------------------------------------------ frames
def test_prepare_images_is_the_training_transform(images):
    wide, tall = images
    b = P.prepare_images([wide, str(tall)], 128)
    assert b["images"].shape == (2, 3, 128, 128)
    assert b["image_sizes"].tolist() == [[64, 128], [128, 77]] and b["orig_sizes"].tolist() == [[100, 200], [150, 90]]
    tf = ResizePad(128)
    assert torch.equal(b["images"][0], tf.image(Image.open(wide)))
    assert b["images"][0, :, 64:].abs().sum() == 0 and b["images"][1, :, :, 77:].abs().sum() == 0   # padding


def test_original_pixel_round_trip_non_square(images):
    """A box in original pixels → the model frame (ResizePad.boxes, what training does) → back."""
    b = P.prepare_images([images[0]], 128)
    box = torch.tensor([[10.0, 20.0, 150.0, 90.0]])
    frame = ResizePad(128).boxes(box, 100, 200)
    assert torch.allclose(frame, torch.tensor([[6.4, 12.8, 96.0, 57.6]]))
    assert torch.allclose(P.to_original(frame, b).float(), box, atol=1e-4)
    whole = torch.tensor([[0.0, 0.0, 128.0, 64.0]])            # the resized content of the input frame
    assert P.to_original(whole, b).tolist() == [[0.0, 0.0, 200.0, 100.0]]
    outside = torch.tensor([[0.0, 0.0, 128.0, 128.0]])         # reaches into the padding → clipped
    assert P.to_original(outside, b).tolist() == [[0.0, 0.0, 200.0, 100.0]]


# ------------------------------------------------------------------------------------------- tasks
def _in_image(xyxy, w, h):
    a = np.asarray(xyxy, dtype=float).reshape(-1, 4)
    return bool(((a[:, [0, 2]] >= 0) & (a[:, [0, 2]] <= w) & (a[:, [1, 3]] >= 0) & (a[:, [1, 3]] <= h)).all())


def test_caption_batched_points_in_original_pixels(stages, images):
    res = P.caption(list(images), stages["caption"], max_new_tokens=6)
    assert [(r["width"], r["height"]) for r in res] == [(200, 100), (90, 150)]
    for r in res:
        assert len(r["points"]) == len(r["tokens"]) == len(r["token_ids"]) and len(r["tokens"]) > 0
        assert _in_image(r["points"], r["width"], r["height"])
        assert sorted(i for wd in r["words"] for i in wd["tokens"]) == list(range(len(r["tokens"])))
    # the same image alone gives the same caption (batching does not change the answer)
    alone = P.caption([images[0]], stages["caption"], max_new_tokens=6)[0]
    assert alone["tokens"] == res[0]["tokens"]
    assert np.allclose(alone["points"], res[0]["points"], atol=0.05)
    # the points are the model's, mapped by the resize scale: 128/200 for the wide image
    s = stages["caption"]
    b = P.prepare_images([images[0]], 128)
    raw = s.model.caption(b["images"], tokenizer=s.tokenizer, prompt=s.prompt, max_new_tokens=6,
                          image_sizes=b["image_sizes"])[0]["points"]
    expect = np.minimum(np.maximum(raw.double().numpy() * 200 / 128, 0), [200, 100, 200, 100])
    assert np.allclose(res[0]["points"], expect, atol=0.01)


def test_locate_segment_region_dense(stages, images):
    wide, tall = images
    loc = P.locate([wide, tall], ["the red circle", "a square"], stages["locate"])
    assert [r["expression"] for r in loc] == ["the red circle", "a square"]
    assert _in_image(loc[0]["box"], 200, 100) and _in_image(loc[1]["box"], 90, 150)
    seg = P.segment([wide, tall], "the red circle", stages["segment"])
    for r, (w, h) in zip(seg, [(200, 100), (90, 150)]):
        assert r["mask_array"].shape == (h, w) and r["mask"]["size"] == [h, w]
        assert np.array_equal(P.decode_rle(r["mask"]), r["mask_array"]) and r["area"] == int(r["mask_array"].sum())
        assert np.isfinite(r["score"])                 # predicted IoU (an untrained head: any value)
    # the segmenter's box is the referring box of the same model (the EOS read-out)
    assert np.allclose(seg[0]["box"], P.locate([wide], ["the red circle"], stages["locate"])[0]["box"], atol=0.02)
    reg = P.region([wide, tall], [[10, 10, 150, 90], [5, 5, 80, 140]], stages["region"], max_new_tokens=5)
    assert reg[0]["box"] == [10.0, 10.0, 150.0, 90.0] and isinstance(reg[0]["text"], str)
    one = P.region([wide, wide], [10, 10, 150, 90], stages["region"], max_new_tokens=5)  # one box for all
    assert one[0]["text"] == one[1]["text"] == reg[0]["text"]
    den = P.dense([wide, tall], stages["dense"], max_new_tokens=4)
    assert len(den) == 2
    for r in den:
        assert 0 < len(r["regions"]) <= 3 and _in_image([g["box"] for g in r["regions"]], r["width"], r["height"])
        assert [g["score"] for g in r["regions"]] == sorted((g["score"] for g in r["regions"]), reverse=True)


def test_json_schema(stages, images):
    wide = images[0]
    keys = {"task", "image", "width", "height", "stage", "checkpoint"}
    cases = {"caption": (P.caption([wide], stages["caption"], max_new_tokens=4), {"text", "tokens", "token_ids",
                                                                                    "points", "words"}),
             "locate": (P.locate([wide], "x", stages["locate"]), {"expression", "box"}),
             "segment": (P.segment([wide], "x", stages["segment"]), {"expression", "box", "mask", "mask_box",
                                                                    "area", "score"}),
             "region": (P.region([wide], [0, 0, 50, 50], stages["region"], max_new_tokens=4), {"box", "text", "tokens"}),
             "dense": (P.dense([wide], stages["dense"], max_new_tokens=4), {"regions"})}
    for task, (res, extra) in cases.items():
        d = json.loads(json.dumps(P.to_json(res[0])))
        assert set(d) == keys | extra, task
        assert d["task"] == task and d["width"] == 200 and d["height"] == 100
    w = json.loads(json.dumps(P.to_json(cases["caption"][0][0])))["words"][0]
    assert set(w) == {"text", "tokens", "point"} and len(w["point"]) == 2
    assert set(cases["dense"][0][0]["regions"][0]) == {"box", "score", "text"}


def test_bad_input_raises_named_errors(stages, images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(P.PredictError, match="image not found: .*nope.png"):
        P.caption([tmp_path / "nope.png"], stages["caption"])
    with pytest.raises(P.PredictError, match="cannot read image .*broken.jpg"):
        P.caption([bad], stages["caption"])
    with pytest.raises(P.PredictError, match=r"outside .*wide.png \(200×100 pixels\)"):
        P.region([images[0]], [10, 10, 250, 50], stages["region"])
    with pytest.raises(P.PredictError, match="x0 < x1"):
        P.region([images[0]], [50, 10, 10, 50], stages["region"])
    with pytest.raises(P.PredictError, match="expression 0 is empty"):
        P.locate([images[0]], "  ", stages["locate"])
    with pytest.raises(P.PredictError, match="2 expressions for 1 images"):
        P.locate([images[0]], ["a", "b"], stages["locate"])
    with pytest.raises(P.PredictError, match="expected four numbers"):
        P.parse_box("1,2,3")
    assert P.parse_box(" 1, 2.5,3,4 ") == [1.0, 2.5, 3.0, 4.0]


# ---------------------------------------------------------------------------------- checkpoints, CLI
@pytest.fixture(scope="module")
def run_folder(world, stages):
    """<run>/checkpoints/ln_trace/ckpt_0000001.pt whose stored config has no run_dir (as the configs of
    record): loading must read the tokenizer of the folder that holds it."""
    from pixelllm.engine.checkpoint import save_checkpoint

    run, _ = world
    cfg = _cfg("ln_trace")                        # run_dir "" → resolved from the checkpoint's location
    save_checkpoint(run / "checkpoints" / "ln_trace", model=stages["caption"].model, step=1, config_json=cfg.to_json())
    return run


def test_load_from_a_run_folder(run_folder, stages, images):
    st = P.load("caption", run_folder, cache=False)
    assert st.stage == "ln_trace" and st.run == run_folder.resolve() and st.checkpoint.name == "ckpt_0000001.pt"
    assert st.prompt == "A long image caption:"
    ref = stages["caption"].model
    mine = st.model.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in ref.state_dict().items())     # the same weights, frozen parts too
    st.model.language_model.t5.generation_config.suppress_tokens = \
        ref.language_model.t5.generation_config.suppress_tokens
    a = P.caption([images[0]], st, max_new_tokens=5)[0]
    b = P.caption([images[0]], stages["caption"], max_new_tokens=5)[0]
    assert a["tokens"] == b["tokens"] and np.allclose(a["points"], b["points"])
    same = P.find_checkpoint("caption", run_folder / "checkpoints" / "ln_trace")
    assert same == P.find_checkpoint("caption", run_folder / "checkpoints") == st.checkpoint


def test_wrong_stage_and_missing_stage(run_folder):
    with pytest.raises(P.PredictError, match=r"segment needs a 'refseg' checkpoint; .*ckpt_0000001.pt is stage "
                                             r"'ln_trace'"):
        P.load("segment", run_folder / "checkpoints" / "ln_trace")
    with pytest.raises(P.PredictError, match="no checkpoint for 'dense'.*checkpoints/densecap"):
        P.load("dense", run_folder)


def test_unreadable_or_homeless_checkpoint(run_folder, tmp_path, monkeypatch):
    junk = tmp_path / "ckpt_0000001.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(P.PredictError, match=r"cannot read checkpoint .*ckpt_0000001.pt"):
        P.load("caption", junk)
    monkeypatch.setenv("PIXELLLM_RUNS", str(tmp_path / "runs"))  # the default run folder is empty too
    alone = tmp_path / "elsewhere" / "model.pt"                # outside <run>/checkpoints/<stage>/: no tokenizer
    alone.parent.mkdir()
    alone.write_bytes((run_folder / "checkpoints" / "ln_trace" / "ckpt_0000001.pt").read_bytes())
    with pytest.raises(P.PredictError, match="no tokenizer at"):
        P.load("caption", alone, cache=False)


def _cli(capsys, *argv):
    code = P.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_exit_codes_and_messages(run_folder, images, tmp_path, capsys):
    ck = str(run_folder)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    cases = [(["caption", "--checkpoint", ck, "--image", str(tmp_path / "missing.jpg")], "image not found:"),
             (["caption", "--checkpoint", ck, "--image", str(bad)], "cannot read image"),
             (["region", "--checkpoint", ck, "--image", str(images[0]), "--box", "1,2,x,4"], "expected four numbers"),
             (["region", "--checkpoint", ck, "--image", str(images[0]), "--box", "0,0,300,50"], "lies outside"),
             (["segment", "--checkpoint", str(run_folder / "checkpoints" / "ln_trace"), "--image", str(images[0]),
               "--expr", "a circle"], "segment needs a 'refseg' checkpoint"),
             (["locate", "--checkpoint", ck, "--image", str(images[0]), "--expr", " "], "--expr is empty"),
             (["caption", "--checkpoint", str(tmp_path / "nowhere"), "--image", str(images[0])], "checkpoint not found")]
    for argv, msg in cases:
        code, out, err = _cli(capsys, *argv)
        assert code == 2, argv
        assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and msg in err, (argv, err)


def test_cli_writes_json_and_overlay(run_folder, images, tmp_path, capsys):
    out_png = tmp_path / "o.png"
    code, out, err = _cli(capsys, "caption", "--checkpoint", str(run_folder), "--image", str(images[0]),
                          "--out", str(out_png))
    assert code == 0
    d = json.loads(out)
    assert d["task"] == "caption" and d["width"] == 200 and d["overlay"] == str(out_png)
    with Image.open(out_png) as im:
        assert im.format == "PNG" and im.width > 100


def test_predictor_one_image_per_call(run_folder, images):
    """What the playground calls: one image in, one result out, each task from the run folder's stage."""
    pred = P.Predictor(run_folder)
    r = pred.caption(np.asarray(Image.open(images[0])))
    assert r["task"] == "caption" and r["image"] == "image[0]" and (r["width"], r["height"]) == (200, 100)
    with pytest.raises(P.PredictError, match="no checkpoint for 'region'"):
        pred.region(images[0], [0, 0, 10, 10])
