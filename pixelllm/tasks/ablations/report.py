"""The ablation tables: seeds aggregated per arm (mean ± sample std), the paper's trends checked on them
(``trend_reproduced`` flags, PAPER_NOTES.md §5), a plain-text table and a bar chart per table."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from pixelllm.configs.ablations import PAPER_FINDINGS, TABLES

#: metrics shown per table (all others stay in the JSON). Higher is better except :data:`LOWER_IS_BETTER`.
TABLE_METRICS: dict[str, tuple[str, ...]] = {
    "loc_supervision": ("refer_P@0.5", "loc_CIDEr-D", "loc_METEOR", "point_l1"),
    "lm": ("test_ce", "point_l1", "CIDEr-D", "METEOR"),
    "encoder": ("point_l1", "test_ce", "CIDEr-D"),
    "point_target": ("point_l1", "test_ce"),
    "head": ("point_l1", "refer_P@0.5", "CIDEr-D", "test_ce"),
}
LOWER_IS_BETTER = ("test_ce", "point_l1", "centre_l1")


# ------------------------------------------------------------------------------------- aggregation
def aggregate(results: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """Per metric over the seeds of one arm: ``{metric: {"mean", "std", "seeds": [value per seed],
    "seed_ids": [...]}}``. ``std`` is the sample standard deviation (ddof 1; 0 for one seed). Non-numeric
    metrics are left out; NaN values are dropped (and counted in ``n_nan``)."""
    rows = sorted(results, key=lambda r: r.get("seed", 0))
    names = sorted({k for r in rows for k, v in r["metrics"].items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    out = {}
    for k in names:
        vals = [(r.get("seed"), float(r["metrics"][k])) for r in rows if k in r["metrics"]]
        good = [(s, v) for s, v in vals if math.isfinite(v)]
        xs = np.array([v for _, v in good])
        out[k] = {"mean": float(xs.mean()) if len(xs) else float("nan"),
                  "std": float(xs.std(ddof=1)) if len(xs) > 1 else 0.0,
                  "seeds": [v for _, v in good], "seed_ids": [s for s, _ in good]}
        if len(good) < len(vals):
            out[k]["n_nan"] = len(vals) - len(good)
    return out


# ------------------------------------------------------------------------------------------ trends
def _mean(table: Mapping[str, Mapping], row: str, metric: str) -> float | None:
    m = table.get(row, {}).get(metric)
    return None if m is None or not math.isfinite(m["mean"]) else m["mean"]


def _winner_flag(table: Mapping[str, Mapping], metric: str, winner: str, others: Sequence[str], what: str) -> dict:
    """Is ``winner`` better than every row of ``others`` on ``metric`` (means; lower is better for
    :data:`LOWER_IS_BETTER`)? ``separated``: every gap exceeds the sum of the two stds (None when a row has
    fewer than two seeds)."""
    lower = metric in LOWER_IS_BETTER
    rel = "<" if lower else ">"
    comp = f"{what}: mean {metric} of {winner} {rel} " + " and ".join(others)
    vals = {r: _mean(table, r, metric) for r in (winner, *others)}
    if any(v is None for v in vals.values()):
        return {"value": None, "comparison": comp + " (rows missing)", "values": vals}
    better = all((vals[winner] < vals[o]) if lower else (vals[winner] > vals[o]) for o in others)
    sep = None                                                  # undecidable from a single seed
    if all(len(table[r][metric].get("seeds", [])) > 1 for r in (winner, *others)):
        sep = bool(all(abs(vals[winner] - vals[o]) > table[winner][metric]["std"] + table[o][metric]["std"]
                       for o in others))
    return {"value": bool(better), "comparison": comp, "values": vals, "separated": sep}


def trend_flags(tables: Mapping[str, Mapping[str, Mapping]]) -> dict[str, dict]:
    """The paper's trends checked on our aggregated tables (``{table: {row: {metric: {mean, std}}}}``).
    Each flag: ``{"value": bool | None (rows missing), "comparison": str, "values": {row: mean},
    "separated": bool | None}``."""
    t4, t5 = tables.get("loc_supervision", {}), tables.get("lm", {})
    enc, pt = tables.get("encoder", {}), tables.get("point_target", {})
    flags = {
        "loc_supervision/dense_best_refer": _winner_flag(t4, "refer_P@0.5", "dense", ("box", "none"), "Table 4"),
        "loc_supervision/dense_best_loc_caption": _winner_flag(t4, "loc_CIDEr-D", "dense", ("box", "none"), "Table 4"),
        "encoder/both_best_point_l1": _winner_flag(enc, "point_l1", "both", ("sam_only", "semantic_only"), "encoders"),
        "encoder/both_best_caption": _winner_flag(enc, "CIDEr-D", "both", ("sam_only", "semantic_only"), "encoders"),
        "point_target/box_beats_center_point_l1": _winner_flag(pt, "point_l1", "box", ("center",), "point target"),
    }
    for size in ("tiny", "large"):
        flags[f"lm/lora_beats_frozen_{size}"] = _winner_flag(t5, "test_ce", f"{size}/lora", (f"{size}/frozen",), "Table 5")
    flags["lm/larger_lm_helps_ce"] = _winner_flag(t5, "test_ce", "large/lora", ("tiny/lora",), "Table 5")
    flags["lm/larger_lm_helps_caption"] = _winner_flag(t5, "CIDEr-D", "large/lora", ("tiny/lora",), "Table 5")
    return flags


def build_report(results: Mapping[str, Sequence[Mapping]], tables: Mapping[str, Mapping[str, str]] = TABLES) -> dict:
    """``{table: {row: {metric: {"mean", "std", "seeds"}}}, ..., "trend_reproduced": {flag: {...}},
    "paper_findings": {...}}`` from ``{arm: [result per seed]}`` (rows whose arm has no result are left out)."""
    agg = {arm: aggregate(rs) for arm, rs in results.items() if rs}
    report: dict[str, Any] = {t: {row: agg[arm] for row, arm in rows.items() if arm in agg} for t, rows in tables.items()}
    report["trend_reproduced"] = trend_flags({t: report[t] for t in tables})
    report["paper_findings"] = dict(PAPER_FINDINGS)
    return report


# ---------------------------------------------------------------------------------- tables / figures
def format_table(report: Mapping[str, Any], table: str, metrics: Sequence[str] | None = None) -> str:
    """Plain-text table ``row | metric mean ± std (n seeds)`` with the paper's finding and our flags below."""
    rows = report.get(table, {})
    metrics = list(metrics or TABLE_METRICS.get(table, ()))
    width = max([len(r) for r in rows] + [8])
    lines = [f"{'arm':{width}s} | " + " | ".join(f"{m:>20s}" for m in metrics)]
    for row, ms in rows.items():
        cells = []
        for m in metrics:
            v = ms.get(m)
            cells.append(f"{v['mean']:9.4f} ± {v['std']:.4f} ({len(v['seeds'])})" if v else f"{'—':>20s}")
        lines.append(f"{row:{width}s} | " + " | ".join(f"{c:>20s}" for c in cells))
    lines.append(f"paper: {PAPER_FINDINGS.get(table, '')}")
    for name, f in report.get("trend_reproduced", {}).items():
        if name.startswith(table + "/"):
            sep = "" if f.get("separated") is None else f" (separated by > 1 std: {f['separated']})"
            lines.append(f"ours:  {f['comparison']} → {f['value']}{sep}")
    return "\n".join(lines)


def figure_table(report: Mapping[str, Any], table: str, metrics: Sequence[str] | None = None, title: str = "",
                 panel_size: float = 3.2):
    """Bar chart per metric (a ``panel_size``-inch square panel each): mean over seeds, error bar = std, each
    seed as a dot. Returns a ``matplotlib.figure.Figure`` (not registered with pyplot)."""
    from matplotlib.figure import Figure

    rows = report.get(table, {})
    metrics = [m for m in (metrics or TABLE_METRICS.get(table, ())) if any(m in v for v in rows.values())]
    fig = Figure(figsize=(panel_size * max(1, len(metrics)), panel_size))
    axes = fig.subplots(1, max(1, len(metrics)), squeeze=False)
    names = list(rows)
    x = np.arange(len(names))
    for ax, m in zip(axes[0], metrics):
        means = [rows[r][m]["mean"] if m in rows[r] else np.nan for r in names]
        stds = [rows[r][m]["std"] if m in rows[r] else 0.0 for r in names]
        ax.bar(x, means, yerr=stds, capsize=4, color="#8fb3d9", edgecolor="#34495e")
        for i, r in enumerate(names):
            pts = rows[r].get(m, {}).get("seeds", [])
            ax.scatter([i] * len(pts), pts, color="#c0392b", s=12, zorder=3)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(m + (" (lower better)" if m in LOWER_IS_BETTER else ""), fontsize=9)
    fig.suptitle(title or f"ablation: {table}", fontsize=10)
    fig.tight_layout()
    return fig
