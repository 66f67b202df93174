"""Every committed notebook: stored without outputs, runs top to bottom in SMOKE mode, and shows each
figure it builds exactly once, as an image."""
import json
import math
import re

import pytest

from pixelllm.notebooks import execute, notebook_paths
from pixelllm.utils import results_dir

NOTEBOOKS = notebook_paths()
EXECUTED = {}  # notebook name -> executed copy, filled by test_notebook_runs_in_smoke_mode

#: A call that builds a matplotlib Figure: the constructor, ``subplots``, or a figure function of the package
#: (``figure_*``, ``plot_curves``, ``grid_figure``; ``figure_dir`` is a folder, not a figure).
BUILDS_FIGURE = re.compile(r"\b(Figure|subplots|plot_curves|grid_figure|figure_(?!dir\b)\w+)\(")
#: The text IPython shows for a Figure it has no image formatter for.
FIGURE_REPR = re.compile(r"<Figure size [\d.]+x[\d.]+ with \d+ Axes>")


def figure_display_problems(executed: dict) -> list[str]:
    """What is wrong with the figures of an executed notebook: a figure shown as its bare text repr, a cell
    that builds a figure without showing an image, the same image shown twice in one cell."""
    problems = []
    for i, cell in enumerate(executed["cells"]):
        if cell["cell_type"] != "code":
            continue
        outputs = cell.get("outputs", [])
        pngs = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
        for o in outputs:
            data = o.get("data", {})
            text = "".join(o.get("text", "")) + "".join(data.get("text/plain", ""))
            if "image/png" not in data and FIGURE_REPR.search(text):
                problems.append(f"cell {i}: a figure shown as text, {FIGURE_REPR.search(text).group()}")
        if BUILDS_FIGURE.search("".join(cell["source"])) and not pngs:
            problems.append(f"cell {i}: builds a figure but shows no image")
        if len(set(pngs)) < len(pngs):
            problems.append(f"cell {i}: the same image is shown {len(pngs) - len(set(pngs)) + 1} times")
    return problems


def test_there_are_notebooks():
    # Guards against the parametrized tests below silently collecting nothing.
    assert len(NOTEBOOKS) > 0


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_committed_clean(nb):
    cells = json.loads(nb.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{nb.name} has outputs"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb.name}: exactly one cell must be tagged 'parameters'"
    assert "SMOKE" in "".join(tagged[0]["source"])


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(nb):
    results = results_dir(smoke=True)
    for name in RESULTS.get(nb.stem[:2], {}):
        (results / name).unlink(missing_ok=True)                   # read what THIS run writes
    out = execute(nb, smoke=True, timeout=600)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    EXECUTED[nb.name] = out


#: what each notebook writes to results_dir: file → the key paths ("/"-separated; "*" = every entry) whose values must be
#: finite numbers — what pixelllm.report and the README read.
RESULTS = {
    "01": {"01_data_stats.json": ["n_scenes", "vocab_size", "single_token_word_fraction", "ln_train_kept",
                                  "splits/*", "mean_tokens/*"]},
    "02": {"pretrained_parts.json": ["sam/val_mask_iou", "sam/test_mask_iou", "sam/steps", "t5/val_loss",
                                     "t5/val_token_accuracy", "t5/steps", "semantic_encoder/val_colour_acc",
                                     "semantic_encoder/val_category_acc", "semantic_encoder/steps"]},
    "03": {"caption_pretraining.json": ["steps", "train_ce_last", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]},
    "04": {"trace.json": ["stage1_steps", "stage2_steps", "point_l1", "centre_baseline",
                          "random_other_narrative_baseline", "test_ce", "ratio_to_centre", "CIDEr-D", "METEOR",
                          # the free-running pointing_accuracy_generated(_centre) are written too, but NaN when
                          # the captions name no colour + shape (a SMOKE model's 8 tokens do not)
                          "pointing_accuracy", "pointing_accuracy_centre", "pointing_accuracy_random_object",
                          "pointing_accuracy_target"]},
    "05": {"referring.json": ["referring_localization/*/P@0.5", "referring_segmentation/*/cIoU",
                              "referring_segmentation/*/gIoU", "refseg_gt_box_prompt/*/cIoU", "train/refcoco_steps",
                              "train/refseg_steps"]},
    "06": {"loc_caption.json": ["metrics/*/METEOR", "metrics/*/CIDEr-D", "train/steps",
                                "region_attributes/region_attribute_accuracy", "region_attributes/chance_box_blind"]},
    "07": {"densecap.json": ["map", "map_detection", "ap_table/*", "train/steps"]},
    "08": {"ablations.json": ["loc_supervision/*/*/mean", "encoder/*/*/mean", "point_target/*/*/mean", "head/*/*/mean",
                              "lm/*/*/mean", "protocol/steps"]},
    "09": {"pixellm.json": ["pixellm/ciou_single", "pixellm/ciou_single_sam_path", "pixellm/giou_multi",
                            "pixellm/params_added", "pixellm/params_added_sam_path", "pixellm/latency_ms",
                            "pixellm/latency_ms_sam_path", "ablations/*/ciou_single/mean"]},
    "10": {"playground.json": ["latency_ms/*", "latency_ms_per_image_batched/*", "n_examples"]},
    "11": {"own_data.json": ["n_images", "splits/*", "train/steps", "train/seconds", "before/ce", "after/ce",
                             "before/point_l1", "after/point_l1", "before/word_recall", "after/word_recall",
                             "after/n_images_with"]},
}


def values_at(obj, path: str):
    """The values at a ``/``-separated key path of a JSON object; ``*`` expands every entry (KeyError if absent)."""
    head, _, rest = path.partition("/")
    items = list(obj.values()) if head == "*" else [obj[head]]
    if head == "*" and not items:
        raise KeyError(f"{path}: no entries")
    return [v for it in items for v in (values_at(it, rest) if rest else [it])]


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_writes_its_results(nb):
    """The results JSON the SMOKE run above wrote: every key the report reads is there and finite."""
    if nb.name not in EXECUTED:
        pytest.skip("checks the results written by test_notebook_runs_in_smoke_mode in the same pytest run")
    expected = RESULTS[nb.stem[:2]]
    for name, paths in expected.items():
        path = results_dir(smoke=True) / name
        assert path.is_file(), f"{nb.name} did not write {path}"
        data = json.loads(path.read_text())
        for key in paths:
            try:
                values = values_at(data, key)
            except (KeyError, TypeError) as e:
                raise AssertionError(f"{name}: no {key!r} ({e})") from None
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
            assert not bad, f"{name}: {key} = {bad[:3]} (not finite numbers)"


def test_every_notebook_has_a_results_contract():
    assert sorted(RESULTS) == sorted(p.stem[:2] for p in NOTEBOOKS)


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shows_each_figure_once_as_an_image(nb):
    """In the copy executed above: every cell that builds a figure carries an ``image/png`` output, no output
    is a bare ``<Figure size ...>`` text, and no cell shows the same image twice."""
    if nb.name not in EXECUTED:
        pytest.skip("checks the copy executed by test_notebook_runs_in_smoke_mode in the same pytest run")
    problems = figure_display_problems(json.loads(EXECUTED[nb.name].read_text()))
    assert not problems, f"{nb.name}:\n" + "\n".join(problems)
