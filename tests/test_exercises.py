"""The course kit: solution cells in nbgrader's format, each followed by a checking cell, and the student
versions ``make exercises`` writes (valid notebooks, no solution left, nbgrader's stub instead). The full
notebooks, solutions and checks included, run in SMOKE mode in tests/test_notebooks.py."""
from __future__ import annotations

import json

import nbformat
import pytest

from pixelllm.exercises import BEGIN, END, STUB, solution_cells, strip_solution, student_version, write_exercises
from pixelllm.notebooks import notebook_paths

#: notebook prefix → the names each of its solutions must define (the steps the course kit covers)
REQUIRED = {"04": [["my_index"], ["my_centre", "my_l1"]], "05": [["my_box"], ["my_ciou", "my_giou"]],
            "07": [["matches"]]}


def load(prefix: str) -> dict:
    return json.loads(next(p for p in notebook_paths() if p.name.startswith(prefix)).read_text())


def solution_text(src: str) -> list[str]:
    lines = src.splitlines()
    return [ln for ln in lines[lines.index(BEGIN) + 1: lines.index(END)] if ln.strip()]


@pytest.mark.parametrize("prefix", sorted(REQUIRED))
def test_solution_cells_define_the_steps_and_are_checked(prefix):
    nb = load(prefix)
    cells = solution_cells(nb)
    assert len(cells) == len(REQUIRED[prefix])
    for i, names in zip(cells, REQUIRED[prefix]):
        src = "".join(nb["cells"][i]["source"])
        body = "\n".join(solution_text(src))
        assert all(f"{n} =" in body for n in names), (prefix, i, names)
        check = "".join(nb["cells"][i + 1]["source"])
        assert nb["cells"][i + 1]["cell_type"] == "code" and "assert" in check
        assert all(n in check for n in names)                   # the check reads what the solution defines
        assert nb["cells"][i - 1]["cell_type"] == "markdown" and "Exercise" in "".join(nb["cells"][i - 1]["source"])


def test_write_exercises_strips_every_solution(tmp_path):
    written = write_exercises(tmp_path)
    assert sorted(p.name[:2] for p in written) == sorted(REQUIRED)
    for p in written:
        student = json.loads(p.read_text())
        nbformat.validate(nbformat.from_dict(student))
        full = json.loads(next(q for q in notebook_paths() if q.name == p.name).read_text())
        assert len(student["cells"]) == len(full["cells"])
        text = "".join("".join(c["source"]) for c in student["cells"])
        assert BEGIN not in text and END not in text
        assert text.count(STUB[1]) == len(solution_cells(full))
        for i in solution_cells(full):
            for line in solution_text("".join(full["cells"][i]["source"])):
                assert line not in "".join(student["cells"][i]["source"]), (p.name, line)
        # every other cell is unchanged
        same = [k for k in range(len(full["cells"])) if k not in solution_cells(full)]
        assert all(student["cells"][k]["source"] == full["cells"][k]["source"] for k in same)


def test_strip_solution_keeps_indentation_and_refuses_broken_markers():
    src = "x = 1\nif x:\n    ### BEGIN SOLUTION\n    y = 2\n    ### END SOLUTION\nprint(y)\n"
    assert strip_solution(src) == "x = 1\nif x:\n    # YOUR CODE HERE\n    raise NotImplementedError()\nprint(y)\n"
    for bad, msg in [("### BEGIN SOLUTION\ny = 1\n", "without"), ("y = 1\n### END SOLUTION\n", "without"),
                     ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "nested")]:
        with pytest.raises(ValueError, match=msg):
            strip_solution(bad, "nb cell 3")
    nb = {"cells": [{"cell_type": "code", "source": [src], "outputs": [{"output_type": "stream"}],
                     "execution_count": 4, "metadata": {}}]}
    out = student_version(nb)
    assert out["cells"][0]["outputs"] == [] and out["cells"][0]["execution_count"] is None
    assert nb["cells"][0]["execution_count"] == 4                     # the input is not modified
