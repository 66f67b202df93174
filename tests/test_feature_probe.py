"""bench/feature_probe.py: the linear probe separates what is linearly separable and is at chance on noise;
the centre cell of an object is the grid cell its box centre falls in."""
import pytest
import torch
from conftest import import_bench


@pytest.fixture(scope="module")
def probe():
    yield from import_bench("feature_probe")


def test_linear_probe_reads_separable_labels_and_not_noise(probe):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 6, (600,), generator=g)
    centres = 3.0 * torch.randn(6, 16, generator=g)
    x = centres[y] + 0.5 * torch.randn(600, 16, generator=g)
    assert probe.linear_probe(x[:400], y[:400], x[400:], y[400:], 6) > 0.97
    noise = torch.randn(600, 16, generator=g)
    acc = probe.linear_probe(noise[:400], y[:400], noise[400:], y[400:], 6)
    assert acc < 0.3                                        # chance 1/6


def test_centre_cell_features_take_the_cell_of_the_box_centre(probe, monkeypatch):
    from types import SimpleNamespace

    class Grid:                                             # feature c at cell (i, j) = 100 i + j
        def image_features(self, images, sizes):
            i, j = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
            return (100 * i + j)[None, None].expand(len(images), 2, 8, 8)

    class DS:
        narratives = [SimpleNamespace(image_id=7), SimpleNamespace(image_id=7)]   # one image, two narratives

        def __len__(self):
            return 2

        def __getitem__(self, k):
            return {"images": torch.zeros(3, 128, 128), "image_sizes": torch.tensor([96, 128])}

    obj = [SimpleNamespace(box=(0.0, 0.0, 0.25, 0.25), shape="star", color="red"),      # centre (16, 12) px
           SimpleNamespace(box=(0.5, 0.5, 1.0, 1.0), shape="cross", color="blue")]      # centre (96, 72) px
    monkeypatch.setattr("pixelllm.data.datasets.collate",
                        lambda items: {k: torch.stack([it[k] for it in items]) for k in items[0]})
    X, shapes, colours = probe.centre_cell_features(Grid(), DS(), {"7": obj}, n_images=5)
    assert X[:, 0].tolist() == [0 * 100 + 1, 4 * 100 + 6]  # rows 12/16 → 0, 72/16 → 4; columns 16/16 → 1, 96/16 → 6
    assert shapes.tolist() == [3, 5] and colours.tolist() == [0, 2]
