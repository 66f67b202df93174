"""Figure output: PNG bytes, atomic saving, and inline display in Jupyter."""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figure_to_png(fig: Figure, dpi: float | None = None) -> bytes:
    """PNG bytes of ``fig`` (Agg), at the figure's dpi unless given. Fixed size (no tight bbox)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: float = 110, **kwargs: Any) -> Path:
    """Save ``fig`` atomically (temp file + rename, so a killed notebook never leaves half a PNG).
    The format follows the suffix; ``kwargs`` go to ``Figure.savefig``. Returns the path."""
    from pixelllm.utils import atomic_write_bytes

    p = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=p.suffix.lstrip(".") or "png", dpi=dpi, **kwargs)
    atomic_write_bytes(p, buf.getvalue())
    return p


def show_figures_inline(shell: Any = None) -> bool:
    """Let a Jupyter kernel display ``matplotlib.figure.Figure`` objects as PNG images. Returns True when
    Figures have an image formatter afterwards (False outside a Jupyter kernel).

    Figures here are built without pyplot. IPython gets its image formatter for ``Figure`` from pyplot's
    inline backend, which registers it only when the backend loads (on first pyplot use); without it a cell
    ending in ``fig`` shows the text ``<Figure size 900x300 with 2 Axes>`` instead of the plot. This registers
    the PNG formatter the inline backend registers by default (``IPython.core.pylabtools.print_figure``, tight
    bounding box), unless a formatter for Figure exists already; it imports neither pyplot nor a backend.
    Importing :mod:`pixelllm.viz` calls it, so ``fig`` as a cell's last expression (or ``display(fig)``) shows
    the figure once: a Figure built without pyplot is not in pyplot's figure registry, which the inline backend
    shows (again) at the end of a cell. Only the display is affected; the figure, and what
    :func:`save_figure` writes, are unchanged.
    """
    if shell is None:
        ipython = sys.modules.get("IPython")  # imported by every kernel; never imported here
        shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:  # no kernel: a terminal shows text only
        return False
    from functools import partial

    from IPython.core.pylabtools import print_figure
    from matplotlib.figure import Figure

    for mime, formatter in shell.display_formatter.formatters.items():
        if mime == "text/plain":
            continue
        try:
            formatter.lookup_by_type(Figure)
            return True  # registered already: pyplot's inline backend loaded, or a user setting
        except KeyError:
            pass
    png = shell.display_formatter.formatters["image/png"]
    png.for_type(Figure, partial(print_figure, fmt="png", base64=True, bbox_inches="tight"))
    return True


__all__ = ["figure_to_png", "save_figure", "show_figures_inline"]
