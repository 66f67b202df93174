"""Training curves from JSON-lines logs (one panel per metric, one line per run, optional EMA smoothing)
and metric tables."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pixelllm.viz.inputs import word_colors


def read_jsonl_records(path: str | Path) -> tuple[list[dict], list[int]]:
    """Read a JSON-lines log: ``(records, skipped_line_numbers)``.

    Blank lines are ignored; a line that is not a JSON object (e.g. the half-written last line of a
    log still being written) is skipped and its 1-based number returned, never raised mid-file.
    """
    records, skipped = [], []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                skipped.append(ln)
                continue
            if isinstance(r, dict):
                records.append(r)
            else:
                skipped.append(ln)
    return records, skipped


def _ema(y: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing): s_t = w·s_{t-1} + (1-w)·y_t,
    divided by (1 - w^t) so the first values are not pulled towards 0. NaNs are passed through."""
    out = np.full_like(y, np.nan, dtype=np.float64)
    s, k = 0.0, 0
    for i, v in enumerate(y):
        if not np.isfinite(v):
            continue
        k += 1
        s = weight * s + (1 - weight) * v
        out[i] = s / (1 - weight**k)
    return out


def _runs(sources: Any) -> list[tuple[str, list[dict]]]:
    """Normalise ``sources`` to ``[(label, records)]`` and warn about skipped log lines."""
    def _one(label: str | None, src: Any) -> tuple[str, list[dict]]:
        if isinstance(src, (str, Path)):
            recs, skipped = read_jsonl_records(src)
            if skipped:
                warnings.warn(f"{src}: skipped {len(skipped)} malformed line(s): {skipped[:10]}", stacklevel=3)
            return (label or Path(src).stem, recs)
        recs = list(src)
        bad = [i for i, r in enumerate(recs) if not isinstance(r, Mapping)]
        if bad:
            raise ValueError(f"records[{bad[0]}]: expected a dict of metrics, got {type(recs[bad[0]]).__name__}")
        return (label or "run", recs)

    if isinstance(sources, Mapping):
        return [_one(str(k), v) for k, v in sources.items()]
    if isinstance(sources, (str, Path)):
        return [_one(None, sources)]
    sources = list(sources)
    if sources and all(isinstance(s, Mapping) for s in sources):
        return [_one(None, sources)]  # one run given as a list of records
    return [_one(None, s) for s in sources]


def plot_curves(
    sources: Any,
    keys: Sequence[str] = ("loss",),
    x: str = "step",
    smooth: float = 0.0,
    logy: bool = False,
    panel_size: tuple[float, float] = (4.0, 3.0),
    dpi: int = 100,
) -> Figure:
    """Training curves, one panel per metric key, one line per run.

    Args:
        sources: a JSONL path, a list of paths, a list of records (dicts, one run), or a dict
            ``{label: path or records}``. Records lacking a key (e.g. eval records in a train log) are
            ignored for that key; values that are not numbers are ignored.
        keys: metric names; a key found in no run raises ``ValueError`` (typo guard).
        x: the x-axis key (records without it use their index in the run).
        smooth: EMA weight in [0, 1) (TensorBoard style, debiased); > 0 draws the raw curve faintly and
            the smoothed one on top.
    """
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    runs = _runs(sources)
    keys = [keys] if isinstance(keys, str) else list(keys)
    present = {k for _, recs in runs for r in recs for k in r}
    missing = [k for k in keys if k not in present]
    if missing:
        raise ValueError(f"plot_curves: key(s) {missing} not in any record; available: {sorted(present)}")
    fig = Figure(figsize=(panel_size[0] * len(keys), panel_size[1]), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    cols = word_colors(len(runs))
    for ax, key in zip(axes, keys):
        for (label, recs), col in zip(runs, cols):
            xs, ys = [], []
            for i, r in enumerate(recs):
                v = r.get(key)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                xv = r.get(x, i)
                xs.append(float(xv) if isinstance(xv, (int, float)) else float(i))
                ys.append(float(v))
            if not xs:
                continue
            xs_a, ys_a = np.asarray(xs), np.asarray(ys)
            if smooth > 0:
                ax.plot(xs_a, ys_a, color=col, alpha=0.25, linewidth=1, gid=f"raw:{label}")
                ax.plot(xs_a, _ema(ys_a, smooth), color=col, linewidth=1.8, label=label, gid=f"curve:{label}")
            else:
                ax.plot(xs_a, ys_a, color=col, linewidth=1.5, label=label, gid=f"curve:{label}")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
    return fig


def plot_metric_table(
    ax: Axes,
    rows: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    fmt: str = "{:.3f}",
    title: str | None = None,
    name_key: str = "name",
) -> Axes:
    """A metrics table drawn on ``ax`` (axes turned off).

    ``rows``: ``{row_name: {metric: value}}`` or a list of dicts with a ``name_key`` entry. Numbers are
    formatted with ``fmt``; missing cells show "–". ``columns`` default: metrics in first-seen order.
    """
    if isinstance(rows, Mapping):
        items = [(str(k), dict(v)) for k, v in rows.items()]
    else:
        items = [(str(r.get(name_key, i)), {k: v for k, v in r.items() if k != name_key}) for i, r in enumerate(rows)]
    if columns is None:
        columns = list(dict.fromkeys(k for _, r in items for k in r))

    def _fmt(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
            return fmt.format(v)
        return str(v)

    cells = [[_fmt(r.get(c)) for c in columns] for _, r in items]
    ax.set_axis_off()
    tab = ax.table(cellText=cells, rowLabels=[n for n, _ in items], colLabels=list(columns), loc="center",
                   cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    tab.scale(1.0, 1.3)
    tab.set_gid("metric_table")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


#: (result key, bar label) per group of :func:`plot_pointing`; the first bar of a group is the model.
POINTING_BARS = {
    "teacher-forced (on-object tokens)": [
        ("pointing_accuracy", "model"), ("pointing_accuracy_target", "the dataset's targets\n(their ceiling)"),
        ("pointing_accuracy_relative_position", "model, words labelled\nby relative position"),
        ("pointing_accuracy_random_object", "random object\nof the image"), ("pointing_accuracy_centre", "image centre")],
    "free-running (generated \"colour shape\" phrases)": [
        ("pointing_accuracy_generated", "model"),
        ("pointing_accuracy_generated_existing", "model, phrases naming\nan object of the image"),
        ("pointing_accuracy_generated_colour", "model, any object\nof the named colour"),
        ("pointing_accuracy_generated_centre", "image centre")],
}


def plot_pointing(metrics: dict, title: str = "pointing accuracy") -> "Figure":
    """Bar chart of a model's pointing accuracy against its baselines, one group per protocol (keys of
    :data:`POINTING_BARS`, as ``pixelllm.engine.evaluate.evaluate_pointing`` returns them; a missing or NaN
    value is drawn as an empty slot labelled "n/a"). The model's bar is dark, baselines light; each bar is
    labelled with its value. Bars carry gid ``"bar:<key>"``. Returns the Figure."""
    from matplotlib.figure import Figure

    groups = [(name, bars) for name, bars in POINTING_BARS.items()]
    widths = [len(b) for _, b in groups]
    fig = Figure(figsize=(1.5 * sum(widths) + 1.0, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(groups), sharey=True, gridspec_kw={"width_ratios": widths})
    for ax, (name, bars) in zip(np.atleast_1d(axes), groups):
        for j, (key, label) in enumerate(bars):
            v = metrics.get(key)
            ok = v is not None and np.isfinite(v)
            ax.bar([j], [v if ok else 0.0], color="tab:blue" if j == 0 else "0.75", gid=f"bar:{key}")
            ax.text(j, (v if ok else 0.0) + 0.02, f"{v:.2f}" if ok else "n/a", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(range(len(bars)), [lab for _, lab in bars], fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_title(name, fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    np.atleast_1d(axes)[0].set_ylabel("fraction of hits (point in the object's box)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


__all__ = ["read_jsonl_records", "plot_curves", "plot_metric_table", "plot_pointing", "POINTING_BARS"]
