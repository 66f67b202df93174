"""bench/grounding_lab.py: the table groups seeds per (recipe, steps) and one SMOKE run produces every metric."""
import json

import pytest
from conftest import import_bench


@pytest.fixture(scope="module")
def lab():
    yield from import_bench("grounding_lab")


def row(recipe, seed, l1, acc, p05, trace_steps=300, minutes=5.0):
    return {"recipe": recipe, "what": f"{recipe} hypothesis", "seed": seed, "trace_steps": trace_steps,
            "refer_steps": 200, "point_l1": l1, "centre_l1": 0.165, "pointing_accuracy": acc, "refer_p05": p05,
            "minutes": minutes}


def test_table_means_over_seeds_and_separates_step_counts(lab):
    rows = [row("a", 0, 0.10, 0.30, 0.20), row("a", 1, 0.12, 0.40, 0.30), row("b", 0, 0.2, None, 0.1),
            row("a", 0, 0.05, 0.9, 0.8, trace_steps=600)]
    lines = lab.render_table(rows).splitlines()
    assert len(lines) == 2 + 3                              # header, rule, (a,300), (b,300), (a,600)
    a = lines[2].split(" | ")
    assert "0.110 (0.100 / 0.120) [0.165]" in a[5] and "0.350 (0.300 / 0.400)" in a[6] and "0.250" in a[10]
    assert a[7] == a[8] == a[9] == "—"                       # no relative-position / free-running metrics recorded
    assert a[4] == "2" and "300 / 200" in a[3]
    b = lines[3].split(" | ")
    assert b[6] == "—" and b[4] == "1"                       # no pointing accuracy recorded
    assert "600 / 200" in lines[4] and "0.050 [0.165]" in lines[4]


def test_every_recipe_names_its_head_and_encoder(lab):
    for name, (what, rec) in lab.RECIPES.items():
        assert what and set(rec) <= {"ln_trace", "refcoco", "refseg"}, name
        for stage, over in rec.items():
            if stage == "refseg":                            # mask-adapter overrides: no model of its own
                continue
            mo = over.get("model_overrides", {})
            assert "head" in mo and "semantic_trainable" in mo, (name, stage)


def test_smoke_run_reports_every_metric(lab):
    from pixelllm.utils import run_dir

    # the shared SMOKE run folder: its prerequisites are reused when other tests made them
    r = lab.run_one("pointer_frozen_sem", 0, trace_steps=2, refer_steps=2, n_eval=4, smoke=True, keep=False,
                    label="my_label", what="labelled run", refseg_steps=2)
    assert r["recipe"] == "my_label" and r["overrides_of"] == "pointer_frozen_sem" and r["what"] == "labelled run"
    for k in ("point_l1", "centre_l1", "refer_p05", "minutes", "CIDEr-D", "refseg_ciou", "refseg_giou"):
        assert isinstance(r[k], float) and r[k] >= 0, k
    assert 0.0 <= r["refer_p05"] <= 1.0 and 0.0 <= r["refseg_ciou"] <= 1.0 and r["refseg_steps"] == 2
    assert not (run_dir(True) / "lab" / "my_label" / "seed0").exists()     # deleted after scoring
    json.dumps(r)


def test_lab_rows_keep_their_meaning_when_the_configs_of_record_change(lab):
    """The configs of record train the head at 5x; a lab recipe that does not name a multiplier runs at 1x."""
    from pixelllm.configs import get_config

    assert get_config("ln_trace").lr_multipliers == {"trace_head.": 5.0}
    assert lab.merged("ln_trace", lab.RECIPES["pointer_frozen_sem"][1], {}, True).lr_multipliers == {}
    assert lab.merged("refcoco", lab.RECIPES["pointer_head_lr5"][1], {}, True).lr_multipliers == {"trace_head.": 5.0}
    grouped = lab.merged("ln_trace", lab.RECIPES["pointer_lr5_grouped"][1], {"steps": 7}, True)
    assert grouped.group_by_length and grouped.steps == 7
    assert not lab.merged("refcoco", lab.RECIPES["pointer_lr5_grouped"][1], {}, True).group_by_length


def test_lab_rows_keep_their_meaning_with_the_adopted_pointing_levers(lab):
    """The configs of record read points from the read state through a context layer on span targets; a lab
    recipe that names none of these runs without them, and one that names them gets exactly them."""
    from pixelllm.configs import get_config

    rec = get_config("ln_trace")
    assert rec.ln_alignment == "span"
    assert rec.model_overrides["pointer_context"] == 1 and rec.model_overrides["point_state"] == "read"
    assert get_config("refcoco").model_overrides["point_state"] == "read"
    plain = lab.merged("ln_trace", lab.RECIPES["pointer_head_lr5"][1], {}, True)
    assert plain.ln_alignment == "official" and plain.cell_weight == 0.0
    assert plain.model_overrides == {"head": "pointer", "semantic_trainable": False, "point_state": "emit",
                                     "pointer_context": 0, "pointer_stem": 0}
    combined = lab.RECIPES["pointer_lr5_context_span_read"][1]
    t = lab.merged("ln_trace", combined, {}, True)
    assert t.ln_alignment == "span"
    assert (t.model_overrides["pointer_context"], t.model_overrides["point_state"]) == (1, "read")
    r = lab.merged("refcoco", combined, {}, True)
    assert (r.model_overrides["pointer_context"], r.model_overrides["point_state"]) == (0, "read")
    assert lab.merged("ln_trace", lab.RECIPES["pointer_lr5_stem"][1], {}, True).model_overrides["pointer_stem"] == 64


def test_table_shows_segmentation_and_referring_only_rows(lab):
    rows = [{**row("r", s, None, None, p), "trace_steps": 0, "refer_steps": 400, "refseg_steps": 200,
             "refseg_ciou": c, "refseg_giou": g} for s, p, c, g in ((0, 0.5, 0.40, 0.45), (1, 0.7, 0.60, 0.65))]
    cells = lab.render_table(rows).splitlines()[2].split(" | ")
    assert "record / 400 / 200" in cells[3]
    assert cells[10] == "0.600 (0.500 / 0.700)" and cells[11] == "0.500 (0.400 / 0.600) (0.550)"


def test_referring_only_recipes_change_one_thing_from_the_referring_recipe_of_record(lab):
    """A referring-only row starts from the referring recipe of record (head x5, read state, no context layer)
    and changes only what it names; mask-adapter overrides reach the refseg config alone."""
    base = lab.merged("refcoco", lab.RECIPES["refer_record"][1], {}, True)
    assert base.lr_multipliers == {"trace_head.": 5.0} and base.model_overrides["point_state"] == "read"
    assert base.model_overrides["pointer_context"] == 0 and base.giou_weight == 1.0
    giou = lab.merged("refcoco", lab.RECIPES["refer_giou2"][1], {}, True)
    assert giou.giou_weight == 2.0 and giou.lr_multipliers == base.lr_multipliers
    assert lab.merged("refcoco", lab.RECIPES["refer_head_lr10"][1], {}, True).lr_multipliers == {"trace_head.": 10.0}
    assert lab.merged("refcoco", lab.RECIPES["refer_lora_release"][1], {}, True).model_overrides["lora_targets"] == "release"
    assert lab.RECIPES["refseg_singlemask"][1]["refseg"] == {"multimask_output": False}
    assert lab.RECIPES["refer_record"][1]["refseg"] == {}
