"""Ablations (notebook 08): arm configs differ exactly in the intended field, box-only targets on a
hand-made narrative, supervision views, the frozen-encoder arm model (cached full grid = uncached forward,
one cache shared across arms), the stage-1 checkpoint of record, aggregation over seeds, trend flags on
fake results, and the result cache (found → load)."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from pixelllm.configs import ablations as C
from pixelllm.tasks import ablations as A
from conftest import make_test_model

torch.set_num_threads(1)

EVAL_ONLY = {"downstream"}          # evaluation switches, not training differences


# ------------------------------------------------------------------------------------------- configs
def _diff(a, b) -> set[str]:
    return {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)} - {"arm", "stage", "seed"}


@pytest.mark.parametrize("arm, fields, check", [
    ("loc_none", {"loc_supervision"}, lambda c: c.loc_supervision == "none"),
    ("loc_box", {"loc_supervision"}, lambda c: c.loc_supervision == "box"),
    ("target_center", {"point_target"}, lambda c: c.point_target == "center"),
    ("enc_sam_only", {"model_overrides"}, lambda c: c.model_overrides == {"head": "pointer", "encoder_mode": "sam_only"}),
    ("enc_semantic_only", {"model_overrides"}, lambda c: c.model_overrides == {"head": "pointer", "encoder_mode": "semantic_only"}),
    ("lm_tiny_frozen", {"model_overrides", "init_lm"}, lambda c: c.model_overrides == {"head": "pointer", "lm_mode": "frozen"} and not c.init_lm),
    ("lm_tiny_lora", {"model_overrides", "init_lm"}, lambda c: c.model_overrides == {"head": "pointer", "lm_mode": "lora"} and c.lm_size == "tiny"),
    ("lm_large_full", {"model_overrides", "init_lm", "lm_size"}, lambda c: c.model_overrides == {"head": "pointer", "lm_mode": "full"} and c.lm_size == "large"),
    ("head_mlp", {"model_overrides"}, lambda c: c.model_overrides == {"head": "mlp", "head_parametrization": "corners"}),
])
@pytest.mark.parametrize("smoke", [False, True])
def test_arm_differs_from_baseline_only_in_its_field(arm, fields, check, smoke):
    base = C.get_arm_config("baseline", smoke=smoke)
    cfg = C.get_arm_config(arm, smoke=smoke, seed=3)
    assert _diff(cfg, base) - EVAL_ONLY == fields
    assert check(cfg) and cfg.seed == 3 and cfg.arm == arm and cfg.stage == f"ablation_{arm}"
    # a shared override (the notebook's step budget) reaches every arm alike
    assert C.get_arm_config(arm, smoke=smoke, overrides={"steps": 7}).steps == 7


def test_baseline_is_the_tiny_recipe_and_tables_cover_every_arm():
    b = C.get_config()
    assert (b.loc_supervision, b.point_target, b.lm_size, b.init_lm) == ("dense", "box", "tiny", True)
    assert b.model_overrides == {"head": "pointer"}
    assert b.tasks == {"trace": 1.0} and b.lambda_point == 0.1 and b.label_smoothing == 0.1 and b.init_from == "pretrain"
    used = {arm for rows in C.TABLES.values() for arm in rows.values()}
    assert used == set(C.ARMS)
    assert {C.TABLES[t][r] for t, r in (("loc_supervision", "dense"), ("encoder", "both"), ("point_target", "box"),
                                        ("head", "pointer (tiny preset)"))} == {"baseline"}
    s = C.get_config(smoke=True)
    assert s.steps <= 3 and s.refer_steps <= 3 and s.loccap_steps <= 3
    # fixed step counts, no wall-clock cap: time_limit_s is only the safety net (0 = off)
    for c in (b, s):
        assert c.time_limit_s == 0 and not hasattr(c, "large_t5_time_limit_s")
        assert c.warmup_steps == max(1, c.steps // 10)


def test_bad_arm_and_field_values_raise():
    with pytest.raises(KeyError, match="unknown ablation arm"):
        C.get_arm_config("nope")
    with pytest.raises(ValueError, match="loc_supervision"):
        C.check_config(dataclasses.replace(C.get_config(), loc_supervision="boxes"))
    with pytest.raises(ValueError, match="SupervisionView"):
        A.SupervisionView([], "boxes")


# ------------------------------------------------------------------------------- box-only targets
def _narrative():
    """Two utterances; the mouse goes (0.1,0.2)→(0.3,0.4) during the first (t 0..1) and
    (0.6,0.5)→(0.8,0.9) during the second (t 1.5..2)."""
    pts = [(0.1, 0.2, 0.0), (0.3, 0.4, 1.0), (0.6, 0.5, 1.5), (0.8, 0.9, 2.0)]
    return {"image_id": "1", "caption": "a red circle and a star",
            "timed_caption": [{"utterance": "a red circle", "start_time": 0.0, "end_time": 1.0},
                              {"utterance": "and a star", "start_time": 1.5, "end_time": 2.0}],
            "traces": [[{"x": x, "y": y, "t": t} for x, y, t in pts]]}


def test_box_only_targets_on_a_hand_made_narrative():
    from pixelllm.data.localized_narratives import align_tokens_to_trace

    al = align_tokens_to_trace(_narrative(), 4)          # tokens at 0, .25, .5, .75 → utterances 0, 0, 1, 1
    dense = torch.tensor(al.points, dtype=torch.float32)
    valid = torch.tensor(al.valid)
    a, b = [0.1, 0.2, 0.3, 0.4], [0.6, 0.5, 0.8, 0.9]
    assert torch.allclose(dense, torch.tensor([a, a, b, b]), atol=1e-6)
    box = A.narrative_box_targets(dense, valid)
    assert torch.allclose(box, torch.tensor([[0.1, 0.2, 0.8, 0.9]] * 4), atol=1e-6)   # union = the whole trace's box
    # invalid rows stay as they were; nothing valid → unchanged
    v2 = torch.tensor([True, False, True, False])
    pts = torch.tensor([[1.0, 2, 3, 4], [9, 9, 9, 9], [0.0, 5, 2, 6], [7, 7, 7, 7]])
    out = A.narrative_box_targets(pts, v2)
    assert out[0].tolist() == out[2].tolist() == [0.0, 2.0, 3.0, 6.0] and out[1].tolist() == [9] * 4
    assert torch.equal(A.narrative_box_targets(pts, torch.zeros(4, dtype=torch.bool)), pts)


def test_supervision_views_change_only_the_training_targets():
    s = {"points": torch.tensor([[1.0, 1, 2, 2], [5, 5, 6, 6], [0, 0, 0, 0]]),
         "point_valid": torch.tensor([True, True, False]), "trace_samples": torch.rand(3, 16, 2),
         "target_ids": torch.tensor([5, 6, 1])}
    data = [s]
    dense, box, none = (A.SupervisionView(data, m)[0] for m in ("dense", "box", "none"))
    assert torch.equal(dense["points"], s["points"]) and torch.equal(dense["point_valid"], s["point_valid"])
    assert box["points"][:2].tolist() == [[1, 1, 6, 6]] * 2 and torch.equal(box["point_valid"], s["point_valid"])
    assert not none["point_valid"].any() and torch.equal(none["points"], s["points"])
    for v in (dense, box, none):                                # evaluation ground truth untouched
        assert torch.equal(v["trace_samples"], s["trace_samples"]) and torch.equal(v["target_ids"], s["target_ids"])
    assert torch.equal(s["point_valid"], torch.tensor([True, True, False]))   # the source sample is not mutated


# ------------------------------------------------------------------------------- frozen-encoder arm
def _batch():
    return dict(images=torch.rand(2, 3, 128, 128), boxes=torch.tensor([[0.0, 0, 128, 96], [10, 20, 60, 90]]),
                prompt_ids=torch.tensor([[5, 6, 1], [7, 1, 0]]), prompt_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]).bool(),
                target_ids=torch.tensor([[8, 9, 1], [10, 1, 0]]), image_sizes=torch.tensor([[96, 128], [128, 128]]))


def _frozen_encoder_model():
    """A PixelLLM as an arm trains it: the whole image encoder frozen (``build_arm_model``)."""
    torch.manual_seed(0)
    model = make_test_model(seed=None, vocab_size=50)
    with torch.no_grad():                                      # make LoRA B non-zero so the LM path is exercised
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    model.image_encoder.requires_grad_(False)
    return model


def test_frozen_encoder_arm_caches_the_full_grid_and_matches_the_uncached_forward():
    from pixelllm.engine.trainer import frozen_feature_fn

    model = _frozen_encoder_model()
    assert frozen_feature_fn(model) is not None                 # the Trainer caches it
    b = _batch()
    with torch.no_grad():
        grid = model.frozen_image_features(b["images"], b["image_sizes"])
        assert grid.shape[1] == model.image_encoder.out_channels   # the whole (SAM ⊕ semantic) grid
        ref = model(**b)
        cached = model(**b, features=grid)
    assert torch.allclose(cached.logits, ref.logits, atol=1e-5) and torch.allclose(cached.points, ref.points, atol=1e-4)
    model.train()                                               # a wholly frozen encoder stays in eval mode
    assert not model.image_encoder.training and model.language_model.training


def test_arms_share_one_feature_cache():
    from types import SimpleNamespace

    from pixelllm.engine.trainer import FeatureCache

    model = _frozen_encoder_model()
    b = {**_batch(), "image_ids": ["7", "9"]}
    store = A.shared_feature_store(("run", "both", "stage1.pt"))
    assert A.shared_feature_store(("run", "both", "stage1.pt")) is store
    first, second = (A.use_feature_store(SimpleNamespace(cache=FeatureCache(model.frozen_image_features)), store)
                     for _ in range(2))
    a = first.cache(b)
    assert (first.cache.misses, first.cache.hits) == (2, 0) and set(store) == {"7", "9"}
    assert torch.equal(second.cache(b), a) and (second.cache.misses, second.cache.hits) == (0, 2)
    assert A.use_feature_store(SimpleNamespace(cache=None), store).cache is None   # nothing to share


def test_load_matching_copies_fitting_tensors_and_reports_the_rest():
    from pixelllm.engine.builder import load_matching

    src = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(4, 2), "lm": torch.nn.Linear(2, 2)})
    dst = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(5, 2), "lm": torch.nn.Linear(2, 2)})
    before_lm = dst["lm"].weight.clone()
    info = load_matching(dst, src.state_dict(), skip_prefixes=("lm.",))
    assert torch.equal(dst["a"].weight, src["a"].weight) and torch.equal(dst["a"].bias, src["a"].bias)
    assert torch.equal(dst["b"].bias, src["b"].bias)             # same shape → copied; weight 2×4 vs 2×5 → skipped
    assert torch.equal(dst["lm"].weight, before_lm)
    assert info["loaded"] == 3 and sorted(info["skipped"]) == ["b.weight", "lm.bias", "lm.weight"]


def test_stage1_is_the_checkpoint_of_record(tmp_path, monkeypatch):
    """ensure_stage1 makes <run>/checkpoints/pretrain with get_config("pretrain") (notebook 03's numbers),
    reuses it when made by that config, and retrains one made by another config."""
    import pixelllm.engine.checkpoint as ck
    import pixelllm.pretrain.prerequisites as pre
    import pixelllm.tasks.captioning as cap
    from pixelllm.configs import get_config
    from pixelllm.utils import config_sidecar, write_json

    made = []

    def run_training(cfg, eval_fn=None, progress=True):
        made.append(cfg)
        write_json(tmp_path / "checkpoints" / "pretrain" / "final.json", {"step": cfg.steps})

    monkeypatch.setattr(pre, "ensure_prerequisites", lambda cfg, progress=True: None)
    monkeypatch.setattr(cap, "run_training", run_training)
    monkeypatch.setattr(ck, "latest_checkpoint", lambda p: p / "ckpt.pt")
    cfg = C.get_arm_config("loc_box", overrides={"run_dir": str(tmp_path)})
    assert A.ensure_stage1(cfg) == tmp_path / "checkpoints" / "pretrain" / "ckpt.pt"
    record = get_config("pretrain")
    assert len(made) == 1 and made[0].steps == record.steps and made[0].to_dict() == {**record.to_dict(), "run_dir": str(tmp_path)}
    A.ensure_stage1(cfg)                                                  # found, same config → reused
    assert len(made) == 1
    side = config_sidecar(tmp_path / "checkpoints" / "pretrain" / "final.json")
    write_json(side, {**json.loads(side.read_text()), "steps": 200})     # a stage 1 of another config
    A.ensure_stage1(cfg)
    assert len(made) == 2


# ------------------------------------------------------------------------------ aggregation / trends
def _res(arm, seed, **metrics):
    return {"arm": arm, "seed": seed, "metrics": metrics}


def test_aggregate_mean_sample_std_and_nan():
    agg = A.aggregate([_res("x", 1, p=0.7, q=float("nan"), note="text"), _res("x", 0, p=0.5, q=2.0)])
    assert agg["p"]["mean"] == pytest.approx(0.6) and agg["p"]["std"] == pytest.approx(math.sqrt(0.02))
    assert agg["p"]["seeds"] == [0.5, 0.7] and agg["p"]["seed_ids"] == [0, 1]
    assert agg["q"] == {"mean": 2.0, "std": 0.0, "seeds": [2.0], "seed_ids": [0], "n_nan": 1}
    assert "note" not in agg
    assert A.aggregate([_res("x", 0, p=0.3)])["p"]["std"] == 0.0


def _fake_results(dense_refer=(0.6, 0.62), box_refer=(0.4, 0.45), none_refer=(0.3, 0.2)):
    out = {}
    for arm, vals in (("baseline", dense_refer), ("loc_box", box_refer), ("loc_none", none_refer)):
        out[arm] = [_res(arm, s, **{"refer_P@0.5": v, "loc_CIDEr-D": 0.5, "point_l1": 0.1}) for s, v in enumerate(vals)]
    out["enc_sam_only"] = [_res("enc_sam_only", 0, point_l1=0.2, **{"CIDEr-D": 0.1})]
    out["baseline"] = [dict(r, metrics={**r["metrics"], "CIDEr-D": 0.3}) for r in out["baseline"]]
    return out


def test_trend_flags_on_fake_results():
    rep = A.build_report(_fake_results())
    assert set(rep["loc_supervision"]) == {"none", "box", "dense"}
    assert rep["loc_supervision"]["dense"]["refer_P@0.5"]["mean"] == pytest.approx(0.61)
    f = rep["trend_reproduced"]["loc_supervision/dense_best_refer"]
    assert f["value"] is True and f["separated"] is True and "dense > box and none" in f["comparison"]
    # a tie on loc CIDEr-D is not "best"
    assert rep["trend_reproduced"]["loc_supervision/dense_best_loc_caption"]["value"] is False
    # encoder table has only two of three rows → undecided
    assert rep["trend_reproduced"]["encoder/both_best_point_l1"]["value"] is None
    assert rep["trend_reproduced"]["lm/larger_lm_helps_ce"]["value"] is None
    # box beats dense → trend not reproduced; overlapping seeds → not separated
    rep2 = A.build_report(_fake_results(dense_refer=(0.40, 0.50), box_refer=(0.44, 0.52)))
    f2 = rep2["trend_reproduced"]["loc_supervision/dense_best_refer"]
    assert f2["value"] is False and f2["separated"] is False
    # lower-is-better metrics compare the other way
    t = {"encoder": {r: {"point_l1": {"mean": m, "std": 0.0, "seeds": [m]}, "CIDEr-D": {"mean": c, "std": 0.0, "seeds": [c]}}
                     for r, m, c in (("both", 0.05, 0.3), ("sam_only", 0.06, 0.2), ("semantic_only", 0.09, 0.25))}}
    fl = A.trend_flags(t)
    assert fl["encoder/both_best_point_l1"]["value"] is True and fl["encoder/both_best_caption"]["value"] is True
    assert fl["encoder/both_best_point_l1"]["separated"] is None          # one seed per row: undecidable
    assert json.loads(json.dumps(rep))                                  # JSON-serialisable as written
    text = A.format_table(rep, "loc_supervision")
    assert "0.6100 ± 0.0141 (2)" in text and "paper: Table 4" in text


def test_figure_has_one_bar_per_row_with_error_bars():
    import matplotlib
    matplotlib.use("Agg")
    rep = A.build_report(_fake_results())
    fig = A.figure_table(rep, "loc_supervision", ["refer_P@0.5"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "box", "dense"]
    assert [round(p.get_height(), 4) for p in ax.patches] == [0.25, 0.425, 0.61]
    assert fig.canvas.manager is None                                    # not a pyplot figure: nothing to close


# ------------------------------------------------------------------------------------------ cache
def test_result_cache_found_load_else_compute(tmp_path):
    cfg = C.get_arm_config("loc_box", smoke=True, seed=1, overrides={"run_dir": str(tmp_path)})
    calls = []

    def compute(c):
        calls.append(c.arm)
        return {"arm": c.arm, "seed": c.seed, "config": A.jsonable(c.to_dict()), "metrics": {"point_l1": 0.1 * len(calls)}}

    r1 = A.arm_result(cfg, compute=compute)
    path = tmp_path / "ablations" / "loc_box" / "1.json"
    assert path.is_file() and calls == ["loc_box"] and r1["metrics"]["point_l1"] == pytest.approx(0.1)
    r2 = A.arm_result(cfg, compute=compute)                              # found → load
    assert calls == ["loc_box"] and r2 == r1
    r3 = A.arm_result(dataclasses.replace(cfg, steps=5), compute=compute)  # other config → recomputed
    assert len(calls) == 2 and r3["metrics"]["point_l1"] == pytest.approx(0.2)
    path.write_text("{broken")
    with pytest.raises(ValueError, match="1.json: line 1"):
        A.arm_result(cfg, compute=compute)


def test_run_ablations_runs_every_arm_seed_once_and_reuses_the_cache(tmp_path):
    calls = []

    def compute(c):
        calls.append((c.arm, c.seed))
        return {"arm": c.arm, "seed": c.seed, "config": A.jsonable(c.to_dict()), "metrics": {"test_ce": 1.0 + c.seed}}

    kw = dict(arms=["baseline", "target_center"], seeds=(0, 1), smoke=True, overrides={"run_dir": str(tmp_path)},
              seeds_per_arm={"target_center": (0,)}, progress=False, compute=compute)
    res = A.run_ablations(**kw)
    assert calls == [("baseline", 0), ("baseline", 1), ("target_center", 0)]
    assert [r["seed"] for r in res["baseline"]] == [0, 1]
    A.run_ablations(**kw)
    assert len(calls) == 3
    rep = A.build_report(res)
    assert rep["point_target"]["box"]["test_ce"]["mean"] == pytest.approx(1.5)


def test_every_table_has_metrics_to_plot_and_print():
    from pixelllm.tasks.ablations.report import TABLE_METRICS

    assert set(TABLE_METRICS) == set(C.TABLES)
    assert all(TABLE_METRICS[t] for t in C.TABLES)


def test_downstream_referring_keeps_the_arms_point_state():
    """An arm's referring fine-tune reads the box from the state its own stage 2 reads points from (the
    paper's emitting state), with notebook 05's head and frozen encoder; an arm's head wins."""
    from pixelllm.configs import get_config
    from pixelllm.tasks.ablations.evaluation import downstream_referring_config

    assert get_config("refcoco").model_overrides["point_state"] == "read"      # the record reads the next state
    base = downstream_referring_config(C.get_arm_config("baseline", smoke=True))
    assert base.model_overrides == {"head": "pointer", "semantic_trainable": False, "point_state": "emit"}
    assert base.stage == "refcoco" and base.eval_samples == 0
    mlp = downstream_referring_config(C.get_arm_config("head_mlp", smoke=True))
    assert mlp.model_overrides == {"head": "mlp", "head_parametrization": "corners", "semantic_trainable": False,
                                   "point_state": "emit"}
