"""bench/train_throughput.py --quick at SMOKE size: results/throughput.json has every key with sane values."""
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("PIXELLLM_RUNS", str(runs))
    mp.syspath_prepend(str(ROOT / "bench"))
    try:
        import train_throughput
        out = runs / "throughput.json"
        train_throughput.main(["--quick", "--out", str(out)])
        yield json.loads(out.read_text()), train_throughput
    finally:
        mp.undo()
        sys.modules.pop("train_throughput", None)


def test_quick_bench_json(result):
    r, bench = result
    assert r["quick"] is True and r["threads"] == 1
    assert 0.1 < r["matmul_peak_gflops"] < 1e5
    assert set(r["stages"]) == {"t5_tiny", "ln_trace"} and r["skipped"] == {}
    for row in r["stages"].values():
        assert row["samples_per_s"] > 0 and row["step_s"] > 0 and row["timed_steps"] == 2
        assert math.isclose(row["samples_per_s"] * row["step_s"], row["batch_size"], rel_tol=1e-6)
    cur, new = r["stage2"]["current"], r["stage2"]["new"]
    assert r["new_recipe"] == bench.NEW_RECIPE and r["current_recipe"] == bench.CURRENT_RECIPE
    assert cur["cache_decoded"] is False and new["cache_decoded"] is True
    assert cur["image_encoder_trainable"] is True
    assert new["image_encoder_trainable"] is False      # the recipe of record freezes the semantic ViT
    assert math.isclose(r["stage2_speedup"], new["samples_per_s"] / cur["samples_per_s"], rel_tol=1e-9)
    parts = ("data", "frozen_encoders", "trainable_encoder", "extractor", "lm", "heads", "loss", "optimizer", "other")
    for row in (cur, new):
        assert tuple(row["parts_s"]) == parts and all(v >= 0 for v in row["parts_s"].values())
        assert row["parts_s"]["lm"] > 0 and row["frozen_encoders_miss_s"] > 0
        assert 1e6 < row["flops_per_sample"] < 1e12 and 0 < row["peak_fraction"] < 1.5
    # a frozen semantic ViT: no backward through it, fewer FLOPs, its whole grid cached
    assert new["flops_per_sample"] < cur["flops_per_sample"]
    assert cur["parts_s"]["trainable_encoder"] > new["parts_s"]["trainable_encoder"]
    levers = r["stage2_levers"]
    assert set(levers) == {k for k, v in bench.LEVERS.items() if not v.get("compile")}
    assert all(v["speedup"] > 0 and v["recipe"] == bench.LEVERS[k] for k, v in levers.items())


def test_recipes_name_what_they_are(monkeypatch):
    """The "current" recipe is the landed one (paper head, the predicting state, no context layer) whatever the
    configs of record adopt; the lever "new_recipe_num_queries_16" is the config of record plus 16 queries."""
    from pixelllm.configs import get_config

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import train_throughput as bench

    try:
        rec = get_config("ln_trace")
        cur = get_config("ln_trace", overrides=bench._recipe_overrides(bench.CURRENT_RECIPE, {}))
        assert cur.model_overrides == {"head": "mlp", "semantic_trainable": True, "point_state": "emit",
                                       "pointer_context": 0}
        assert (cur.ln_alignment, cur.max_target_len, cur.cache_decoded) == ("full_caption", 64, False)
        lever = bench.LEVERS["new_recipe_num_queries_16"]
        q16 = get_config("ln_trace", overrides=bench._recipe_overrides(lever, bench.CURRENT_RECIPE["overrides"]))
        assert q16.model_overrides == {**rec.model_overrides, "num_queries": 16}
        assert (q16.ln_alignment, q16.max_target_len, q16.cache_decoded) == (rec.ln_alignment, rec.max_target_len,
                                                                             rec.cache_decoded)
    finally:
        sys.modules.pop("train_throughput", None)
