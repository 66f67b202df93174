"""bench/pixellm_lab.py: the result line is built from an evaluation dict, and bad overrides are refused
before anything trains."""

import pytest
from conftest import import_bench


@pytest.fixture(scope="module")
def lab():
    yield from import_bench("pixellm_lab")


def test_summary_reads_single_and_multi_scores(lab):
    e = {"single": {"all": {"cIoU": 0.4, "gIoU": 0.5, "n": 200}},
         "multi": {"2-4": {"giou": 0.3}, "by_targets": {"1": {"giou": 0.6}, "2": {"giou": 0.35}, "3+": {"giou": 0.25}}}}
    assert lab.summary(e) == {"ciou_single": 0.4, "giou_single": 0.5, "giou_multi_2_4": 0.3,
                               "giou_by_targets": {"1": 0.6, "2": 0.35, "3+": 0.25}}
    e["multi"].pop("2-4")
    assert lab.summary(e)["giou_multi_2_4"] is None


def test_pixellm_overrides_must_be_a_dict(lab):
    with pytest.raises(SystemExit, match="dict literal"):
        lab.main(["run", "--pixellm", "[1, 2]"])
