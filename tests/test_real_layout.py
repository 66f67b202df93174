"""A user with the real data changes paths, nothing else: the training datasets follow the config's file
templates, so a COCO/LN-style folder (coco_{split}_localized_narratives.jsonl, train2017/, annotations/)
is read by the same code as our synthetic layout."""
import shutil

import pytest

from pixelllm.configs import get_config
from pixelllm.data.synthetic import generate
from pixelllm.data.tokenizer import corpus_texts, train_tokenizer
from pixelllm.engine.datasets import task_dataset
from pixelllm.engine.paths import resolve_paths


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    syn = tmp_path_factory.mktemp("syn")
    generate(syn, n_scenes=24, seed=3, workers=1, progress=False)
    real = tmp_path_factory.mktemp("real")          # the real datasets' folder names
    shutil.copytree(syn / "images", real / "train2017")
    shutil.copy(syn / "localized_narratives" / "synthetic_train_localized_narratives.jsonl",
                real / "coco_train_localized_narratives.jsonl")
    (real / "annotations").mkdir()
    shutil.copy(syn / "captions" / "captions_train.json", real / "annotations" / "captions_train2017.json")
    tok = train_tokenizer(corpus_texts(syn), tmp_path_factory.mktemp("tok"), vocab_size=400)
    return syn, real, tok


@pytest.mark.parametrize("task", ["trace", "caption"])
def test_real_file_names_are_config_paths(worlds, task):
    syn, real, tok = worlds
    cfg_syn = get_config("ln_trace", overrides={"data_dir": str(syn)})
    cfg_real = get_config("ln_trace", overrides={
        "data_dir": str(real), "image_dir": "train2017",
        "ln_file": "coco_{split}_localized_narratives.jsonl",
        "captions_file": "annotations/captions_{split}2017.json"})
    a = task_dataset(task, "train", cfg_syn, resolve_paths(cfg_syn), tok, 128)
    b = task_dataset(task, "train", cfg_real, resolve_paths(cfg_real), tok, 128)
    assert len(a) == len(b) > 0
    sa, sb = a[0], b[0]
    assert (sa["images"] == sb["images"]).all()
    assert (sa["target_ids"] == sb["target_ids"]).all()
