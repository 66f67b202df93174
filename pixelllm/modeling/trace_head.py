"""Trace heads: per-token locations from the language model's last hidden state.

PixelLLM (Xu et al., CVPR 2024, §3.2) adds a small head on L⁻, the language model's last hidden state
**before the vocabulary projection**, so that every emitted token w_i also gets a location p_i:

    h_i = L⁻(f_l, w_<i)          decoder state after T5's final RMSNorm (B×T×D), the same state that
                                 the vocabulary projection turns into the logits of w_i
    p̂_i = MLP(h_i) ∈ R⁴          two points per token, (x0, y0, x1, y1)
    (x, y) = (p̂ + 1) / 2 · (w, h)   pixels of the model's S×S input frame (official release)

and trains it with λ·‖p̂_i − p_i‖₁ next to the captioning cross-entropy (λ = 0.1). The predictions are
**not** fed back into decoding: generation runs the LM alone and the head reads the gathered states.

Three variants, all mapping hidden B×T×D → points B×T×4 in pixels of the input frame, (x, y) order:

* :class:`TraceHead` with ``parametrization="corners"`` — the release's 4-layer pre-LayerNorm GELU MLP,
  raw corners, ``(out + 1) / 2 · (w, h)``.
* :class:`TraceHead` with ``parametrization="center_size"`` — same MLP, output read as a box
  ``(cx, cy, bw, bh) = sigmoid(out)`` → corners. For box regression at the EOS token (referring
  localization): raw corners collapsed to zero-area boxes in our CPU prototype (PAPER_NOTES.md §8).
* :class:`SpatialTraceHead` — ablation: the decoder state attends over the image patch features and
  each point is the attention-weighted mean of patch centres (learned ~1.5× lower per-word error in the
  CPU prototype, PAPER_NOTES.md §8). Not in the paper.
* :class:`PointerHead` — the tiny preset's head (not in the paper): one attention over the patch grid
  gives the box **centre** (soft-argmax of the patch centres + a sub-patch offset) and a small MLP of the
  state and the attended feature gives its **size**. Two attention-weighted corners cannot place the
  corners of a 12–36 px object on a grid of 16 px cells; a centre can (PAPER_NOTES.md §8).
"""
from __future__ import annotations

import torch
from torch import nn

PARAMETRIZATIONS = ("corners", "center_size")


def _frame_scale(frame_hw: tuple[int, int], ref: torch.Tensor) -> torch.Tensor:
    """(w, h, w, h) as a tensor on ``ref``'s device/dtype, from the frame size given as (h, w) pixels."""
    h, w = frame_hw
    return torch.tensor([w, h, w, h], dtype=ref.dtype, device=ref.device)


class TraceHead(nn.Module):
    """MLP trace head (paper / official release).

    Args:
        dim: width D of the LM's decoder states.
        hidden_dim: width of the hidden layers (default D).
        num_layers: number of Linear layers (release: 4), GELU between them, one LayerNorm in front.
        parametrization: ``"corners"`` (paper) or ``"center_size"`` (box at EOS, see module docstring).
    """

    def __init__(self, dim: int, hidden_dim: int | None = None, num_layers: int = 4,
                 parametrization: str = "corners") -> None:
        super().__init__()
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"TraceHead: parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
        if num_layers < 1:
            raise ValueError(f"TraceHead: num_layers must be >= 1, got {num_layers}")
        hidden_dim = hidden_dim or dim
        self.parametrization = parametrization
        layers: list[nn.Module] = [nn.LayerNorm(dim)]  # pre-LayerNorm (release)
        widths = [dim] + [hidden_dim] * (num_layers - 1) + [4]
        for i in range(num_layers):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)

    def forward(self, hidden: torch.Tensor, frame_hw: tuple[int, int],
                image_features: torch.Tensor | None = None) -> torch.Tensor:
        """hidden: B×T×D decoder states (after the final norm) → B×T×4 points (x0, y0, x1, y1), pixels of
        the S×S input frame whose size is ``frame_hw`` = (h, w). ``image_features`` is ignored (same
        signature as :class:`SpatialTraceHead`)."""
        out = self.mlp(hidden)                                    # B×T×4, unbounded
        scale = _frame_scale(frame_hw, out)
        if self.parametrization == "corners":
            # Paper/release: (x, y) = (out + 1) / 2 · (w, h) — out = ±1 are the frame's edges.
            return (out + 1.0) / 2.0 * scale
        # center_size: sigmoid keeps centre and size in [0, 1]; size > 0 so boxes cannot collapse to a
        # point from a symmetric initialisation the way two raw corners do.
        c = torch.sigmoid(out)
        cxcywh = c * scale                                        # pixels
        half = cxcywh[..., 2:] / 2
        return torch.cat([cxcywh[..., :2] - half, cxcywh[..., :2] + half], dim=-1)


class SpatialTraceHead(nn.Module):
    """Ablation head with a spatial inductive bias (not in the paper).

    For each of the two points k ∈ {0, 1}: a_k = softmax_n(q_k(h_i) · k(F_n) / √d) over the N image
    patches, p_k = Σ_n a_k,n · c_n with c_n the patch centres in pixels. Points stay inside the frame.

    Args:
        dim: LM width D; feature_dim: channels C of the image feature grid; attn_dim: query/key width.
    """

    def __init__(self, dim: int, feature_dim: int, attn_dim: int = 128) -> None:
        super().__init__()
        self.attn_dim = attn_dim
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, 2 * attn_dim)                  # one query per point
        self.key = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, attn_dim))

    def forward(self, hidden: torch.Tensor, frame_hw: tuple[int, int],
                image_features: torch.Tensor | None = None) -> torch.Tensor:
        """hidden B×T×D, image_features B×C×H×W (the grid the extractor sees, covering the S×S frame)
        → B×T×4 (x0, y0, x1, y1) pixels of the frame (h, w) = ``frame_hw``."""
        if image_features is None:
            raise ValueError("SpatialTraceHead needs image_features (B×C×H×W)")
        b, t, _ = hidden.shape
        _, _, gh, gw = image_features.shape
        keys = self.key(image_features.flatten(2).transpose(1, 2))            # B×N×A
        q = self.query(self.norm(hidden)).view(b, t, 2, self.attn_dim)         # B×T×2×A
        attn = torch.einsum("btka,bna->btkn", q, keys) / self.attn_dim ** 0.5  # B×T×2×N
        attn = attn.softmax(dim=-1)
        pts = attn @ grid_centres((gh, gw), frame_hw, hidden)                 # N×2 centres (x, y), row-major                                                   # B×T×2×2
        return pts.reshape(b, t, 4)


def grid_centres(grid_hw: tuple[int, int], frame_hw: tuple[int, int], ref: torch.Tensor) -> torch.Tensor:
    """Centres (x, y) in pixels of the frame (h, w) = ``frame_hw`` of the cells of a (gh, gw) grid covering
    it, row-major → N×2 (N = gh·gw) on ``ref``'s device/dtype."""
    (gh, gw), (h, w) = grid_hw, frame_hw
    ys = (torch.arange(gh, device=ref.device, dtype=ref.dtype) + 0.5) * (h / gh)
    xs = (torch.arange(gw, device=ref.device, dtype=ref.dtype) + 0.5) * (w / gw)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)


class PointerHead(nn.Module):
    """Pointer head: the decoder state points at a patch, then refines (not in the paper).

    For a decoder state h_i and the image grid F (N cells with centres c_n, cell size (s_x, s_y) pixels)::

        a_i   = softmax_n( q(h_i) · k(F_n) / τ )                 attention over the N cells, learned τ
        v_i   = Σ_n a_i,n · v(F_n)                               the attended feature
        ĉ_i   = Σ_n a_i,n · c_n + tanh(o([h_i; v_i])) · s / 2     centre: soft-argmax + sub-cell offset
        ŝ_i   = sigmoid(m([h_i; v_i])) · (w, h)                  size, inside the frame
        p̂_i   = (ĉ_i − ŝ_i / 2, ĉ_i + ŝ_i / 2)                   the two points (x0, y0, x1, y1)

    The keys carry a learned projection of fixed Fourier features of the cell position, so a state can
    also point by position ("on the left") when the features alone do not say where. Trained with the same
    L1 (+ GIoU for boxes) as the MLP head.

    Args:
        dim: LM width D; feature_dim: channels C of the grid; attn_dim: query/key/value width;
        hidden_dim: width of the offset/size MLPs; num_freqs: Fourier frequencies of the position code.
    """

    def __init__(self, dim: int, feature_dim: int, attn_dim: int = 128, hidden_dim: int = 128,
                 num_freqs: int = 8, stem_channels: int = 0, context_layers: int = 0) -> None:
        super().__init__()
        self.attn_dim = attn_dim
        self.num_freqs = num_freqs
        #: optional causal self-attention over the decoder states before the query (not in the paper): the
        #: state of "in" in "a red star in the corner" can take the object from the states of "red star"
        self.context = None
        if context_layers:
            layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0,
                                               activation="gelu", batch_first=True, norm_first=True)
            self.context = nn.TransformerEncoder(layer, context_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, attn_dim)
        #: optional convolutional stem on the pixels (stride 8): the head then reads a grid of 8-px cells, the
        #: image features upsampled to it and concatenated with the stem's channels (not in the paper)
        self.stem = None
        if stem_channels:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(64, stem_channels, 3, stride=2, padding=1))
        feature_dim = feature_dim + stem_channels
        self.feature_norm = nn.LayerNorm(feature_dim)
        self.key = nn.Linear(feature_dim, attn_dim)
        self.value = nn.Linear(feature_dim, attn_dim)
        self.pos = nn.Linear(4 * num_freqs, attn_dim)
        self.log_temperature = nn.Parameter(torch.zeros(()))      # τ = √A · exp(−log_temperature)
        self.refine = nn.Sequential(nn.Linear(dim + attn_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 4))

    def head_grid(self, image_features: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """The grid this head reads: ``image_features`` B×C×H×W as they are, or — with a stem — upsampled to the
        stem's finer grid and concatenated with the stem's features of ``images`` B×3×S×S ([0, 1])."""
        if self.stem is None:
            return image_features
        if images is None:
            raise ValueError("PointerHead with a stem needs the images")
        fine = self.stem(images.to(image_features.dtype) - 0.5)
        coarse = nn.functional.interpolate(image_features, size=fine.shape[-2:], mode="nearest")
        return torch.cat([coarse, fine], dim=1)

    def position_code(self, grid_hw: tuple[int, int], ref: torch.Tensor) -> torch.Tensor:
        """Fourier features of the cell centres in [0, 1]² → N×4F (sin/cos of 2^k·π·x and ·y)."""
        c = grid_centres(grid_hw, (1, 1), ref)                                          # N×2 in (0, 1)
        freqs = (2.0 ** torch.arange(self.num_freqs, device=ref.device, dtype=ref.dtype)) * torch.pi
        ang = c[:, :, None] * freqs                                                     # N×2×F
        return torch.cat([ang.sin(), ang.cos()], dim=-1).reshape(c.shape[0], -1)

    def contextual(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden B×T×D → the states the query reads: with ``context_layers``, each state after causal
        self-attention over itself and the states before it (so a generated prefix gives the same result)."""
        if self.context is None:
            return hidden
        causal = nn.Transformer.generate_square_subsequent_mask(hidden.shape[1], hidden.device, hidden.dtype)
        return self.context(hidden, mask=causal, is_causal=True)

    def attention_logits(self, hidden: torch.Tensor, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden B×T×D, grid B×C×H×W → (logits B×T×N over the cells, values B×N×A of the cells)."""
        return self._logits(self.contextual(hidden), image_features)

    def _logits(self, hidden: torch.Tensor, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`attention_logits` of states already through :meth:`contextual`."""
        gh, gw = image_features.shape[-2:]
        f = self.feature_norm(image_features.flatten(2).transpose(1, 2))               # B×N×C
        keys = self.key(f) + self.pos(self.position_code((gh, gw), f))                 # B×N×A
        q = self.query(self.norm(hidden))                                               # B×T×A
        logits = q @ keys.transpose(1, 2) * (self.log_temperature.exp() / self.attn_dim ** 0.5)
        return logits, self.value(f)

    def attention(self, hidden: torch.Tensor, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden B×T×D, grid B×C×H×W → (attention B×T×N over the cells, attended values B×T×A)."""
        logits, values = self.attention_logits(hidden, image_features)
        attn = logits.softmax(dim=-1)                                                   # B×T×N
        return attn, attn @ values

    def forward(self, hidden: torch.Tensor, frame_hw: tuple[int, int],
                image_features: torch.Tensor | None = None, return_logits: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """hidden B×T×D, image_features B×C×H×W (the grid covering the S×S frame) → B×T×4 (x0, y0, x1, y1)
        pixels of the frame (h, w) = ``frame_hw``; with ``return_logits`` also the attention logits
        B×T×H×W (for the cell-classification loss, :func:`pixelllm.modeling.losses.cell_cross_entropy`)."""
        if image_features is None:
            raise ValueError("PointerHead needs image_features (B×C×H×W)")
        gh, gw = image_features.shape[-2:]
        h, w = frame_hw
        hidden = self.contextual(hidden)
        logits, value = self._logits(hidden, image_features.to(hidden.dtype))
        attn = logits.softmax(dim=-1)
        value = attn @ value
        centre = attn @ grid_centres((gh, gw), frame_hw, hidden)                       # B×T×2 soft-argmax
        r = self.refine(torch.cat([self.norm(hidden), value], dim=-1))                 # B×T×4
        cell = torch.tensor([w / gw, h / gh], dtype=hidden.dtype, device=hidden.device)
        centre = centre + torch.tanh(r[..., :2]) * cell / 2
        size = torch.sigmoid(r[..., 2:]) * torch.tensor([w, h], dtype=hidden.dtype, device=hidden.device)
        points = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
        return (points, logits.unflatten(-1, (gh, gw))) if return_logits else points
