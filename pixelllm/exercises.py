"""Student versions of the notebooks: the solution cells' solutions removed, as nbgrader does.

    python -m pixelllm.exercises [--out exercises]      (what ``make exercises`` runs)

A solution cell (docs/COURSE.md) is a code cell that implements one step by hand between the two marker
lines of nbgrader's format::

    ### BEGIN SOLUTION
    my_index = ...
    ### END SOLUTION

followed by a checking cell that asserts the result against the package's function. In the student copy
everything from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` becomes nbgrader's stub (same indentation)::

    # YOUR CODE HERE
    raise NotImplementedError()

so the checking cell fails until the student fills it in. Outputs are cleared; everything else (the
narrative, the parameters cell, the checks) is kept. nbgrader itself is not needed; a course that uses it can
run ``nbgrader generate_assignment`` on the committed notebooks instead, the markers being the same.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from pixelllm.utils import repo_root

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")


def strip_solution(source: str, where: str = "cell") -> str:
    """``source`` with every ``BEGIN``…``END`` region replaced by :data:`STUB` at the BEGIN line's indentation.

    A BEGIN without its END, an END without a BEGIN, or nested regions raise ``ValueError`` naming ``where``."""
    out: list[str] = []
    inside = False
    for k, line in enumerate(source.splitlines(), start=1):
        mark = line.strip()
        if mark == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {k}: nested {BEGIN!r}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + s for s in STUB]
        elif mark == END:
            if not inside:
                raise ValueError(f"{where}, line {k}: {END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN!r} without {END!r}")
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def solution_cells(nb: dict) -> list[int]:
    """Indices of the code cells holding a solution region."""
    return [i for i, c in enumerate(nb["cells"])
            if c["cell_type"] == "code" and any(ln.strip() == BEGIN for ln in "".join(c["source"]).splitlines())]


def student_version(nb: dict, name: str = "notebook") -> dict:
    """A copy of notebook ``nb`` (its JSON) with every solution stripped and all outputs cleared."""
    out = copy.deepcopy(nb)
    for i, cell in enumerate(out["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        new = strip_solution(src, f"{name} cell {i}")
        cell["source"] = new.splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
    return out


def write_exercises(out_dir: str | Path | None = None, notebooks: list[Path] | None = None) -> list[Path]:
    """Write the student version of every notebook that has a solution cell into ``out_dir`` (default
    ``<repo>/exercises``); each is checked with ``nbformat.validate``. Returns the files written."""
    import nbformat

    out = Path(out_dir) if out_dir is not None else repo_root() / "exercises"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for nb_path in notebooks if notebooks is not None else sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        if not solution_cells(nb):
            continue
        student = student_version(nb, nb_path.name)
        nbformat.validate(nbformat.from_dict(student))
        dest = out / nb_path.name
        dest.write_text(json.dumps(student, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="output folder (default <repo>/exercises)")
    args = ap.parse_args(argv)
    written = write_exercises(args.out)
    for p in written:
        print(f"wrote {p}")
    return written


if __name__ == "__main__":
    main()
