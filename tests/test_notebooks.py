"""Every committed notebook: stored without outputs, runs top to bottom in SMOKE mode, and shows each
figure it builds exactly once, as an image."""
import json
import re

import pytest

from pixelllm.notebooks import execute, notebook_paths

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
    out = execute(nb, smoke=True, timeout=600)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    EXECUTED[nb.name] = out


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shows_each_figure_once_as_an_image(nb):
    """In the copy executed above: every cell that builds a figure carries an ``image/png`` output, no output
    is a bare ``<Figure size ...>`` text, and no cell shows the same image twice."""
    if nb.name not in EXECUTED:
        pytest.skip("checks the copy executed by test_notebook_runs_in_smoke_mode in the same pytest run")
    problems = figure_display_problems(json.loads(EXECUTED[nb.name].read_text()))
    assert not problems, f"{nb.name}:\n" + "\n".join(problems)
