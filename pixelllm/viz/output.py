"""Figure output: PNG bytes and atomic saving."""
from __future__ import annotations

import io
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


__all__ = ["figure_to_png", "save_figure"]
