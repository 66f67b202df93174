"""PixelLLM: the full model, composed from its parts (segment-anything style injection).

    f_l   = E(P(b), V(I))                          N visual tokens (prompt feature extractor)
    h_i   = L⁻([f_l ; E_w(prompt)], w_<i)          T5 decoder state after the final norm
    w_i  ~ softmax(lm_head(h_i))                    the caption token
    p_i   = TraceHead(h_i)                          its location: 2 points, pixels of the input frame

Frames: images B×3×S×S in [0, 1], resized so the longest side is S and zero-padded bottom/right;
``image_sizes`` B×2 = (h, w) after resize; boxes and points are (x0, y0, x1, y1) **pixels of that S×S
input frame**. The trace head scales its output by the S×S frame.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from pixelllm.utils import eval_mode

from .image_encoder import ImageEncoder
from .language_model import LanguageModel
from .prompt_encoder import BoxPromptEncoder, whole_image_boxes
from .prompt_extractor import PromptFeatureExtractor
from .trace_head import PointerHead

if TYPE_CHECKING:  # annotations only: build.py imports this module
    from .build import PixelLLMConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"          # trainable weights: semantic encoder, extractor, head
FROZEN_SAM_NAME = "frozen_sam.safetensors"  # only when the config names no SAM checkpoint
LORA_DIR = "lora"                           # peft adapter (save_pretrained format)
T5_DIR = "t5"                               # full T5 (lm_mode "full", or a random-init base with no path)
TRAINABLE_PREFIXES = ("image_encoder.semantic_encoder.", "prompt_extractor.", "trace_head.")


@dataclass
class PixelLLMOutput:
    """Teacher-forced outputs. logits B×T×V; points B×T×4 (x0, y0, x1, y1) pixels of the S×S input frame;
    hidden B×T×D decoder states after the final norm (what the trace head reads)."""

    logits: torch.Tensor
    points: torch.Tensor
    hidden: torch.Tensor
    cell_logits: torch.Tensor | None = None    # B×T×H×W attention logits of a pointer head over the grid


class PixelLLM(nn.Module):
    """Args (all modules, built by :func:`pixelllm.modeling.build.build_pixelllm`):
        image_encoder: :class:`ImageEncoder` (frozen SAM + trainable semantic ViT).
        prompt_encoder: :class:`BoxPromptEncoder` (frozen SAM prompt encoder).
        prompt_extractor: :class:`PromptFeatureExtractor` (two-way transformer, N learnable tokens).
        language_model: :class:`LanguageModel` (T5 + LoRA).
        trace_head: :class:`TraceHead` or :class:`SpatialTraceHead`.
        config: the :class:`PixelLLMConfig` it was built from (saved by :meth:`save_pretrained`).
    """

    def __init__(self, image_encoder: ImageEncoder, prompt_encoder: BoxPromptEncoder,
                 prompt_extractor: PromptFeatureExtractor, language_model: LanguageModel,
                 trace_head: nn.Module, config: "PixelLLMConfig | None" = None) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.prompt_extractor = prompt_extractor
        self.language_model = language_model
        self.trace_head = trace_head
        self.config = config
        if tuple(prompt_encoder.frame_hw) != (image_encoder.image_size, image_encoder.image_size):
            raise ValueError(f"PixelLLM: prompt encoder frame {prompt_encoder.frame_hw} != image encoder input "
                             f"{image_encoder.image_size}px")

    @property
    def image_size(self) -> int:
        """S: side of the square input frame, pixels."""
        return self.image_encoder.image_size

    @property
    def frame_hw(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.prompt_extractor.parameters()).device

    # --- encoding ----------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "PixelLLM":
        super().train(mode)
        if not self.image_encoder_trainable:
            self.image_encoder.eval()                      # wholly frozen: no dropout / drop-path
        return self

    @property
    def image_encoder_trainable(self) -> bool:
        return any(p.requires_grad for p in self.image_encoder.parameters())

    @property
    def has_frozen_features(self) -> bool:
        """Whether part of V(I) is frozen, so that :meth:`frozen_image_features` can be cached."""
        return self.image_encoder.sam_encoder is not None or not self.image_encoder_trainable

    @torch.no_grad()
    def frozen_image_features(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None,
                              sam_features: torch.Tensor | None = None) -> torch.Tensor:
        """The frozen, cacheable part of V(I), to pass back as ``features=``: the whole grid B×C×H×W when
        the image encoder has no trainable parameter (ablations, location-conditioned captioning), else the
        frozen SAM grid B×C_sam×h×w (the semantic ViT trains). ``sam_features``: the SAM embedding of these
        images when already computed (e.g. for the mask decoder), so SAM does not run again."""
        if not self.image_encoder_trainable:
            return self.image_encoder(images, image_sizes, sam_features)
        if sam_features is not None:
            return sam_features
        return self.image_encoder.frozen_sam_features(images, image_sizes)

    def image_features(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None,
                       features: torch.Tensor | None = None) -> torch.Tensor:
        """V(I): the feature grid B×C×H×W covering the S×S frame; ``features`` = the output of
        :meth:`frozen_image_features` for these images (e.g. cached), which skips the frozen part."""
        if features is not None and not self.image_encoder_trainable:
            if features.shape[1] != self.image_encoder.out_channels:
                raise ValueError(f"PixelLLM: cached features have {features.shape[1]} channels, the frozen image "
                                 f"encoder outputs {self.image_encoder.out_channels}")
            return features
        return self.image_encoder(images, image_sizes, features)

    def prompt_tokens(self, grid: torch.Tensor, boxes: torch.Tensor | None, image_sizes: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """f_l = E(P(b), grid): B×N×D visual tokens for one box per row of ``grid`` (B×C×H×W). ``boxes``
        B×4 pixels of the input frame; None = whole image (0, 0, w, h) from ``image_sizes`` (or the frame)."""
        prompt = self.prompt_encoder(boxes, batch_size=grid.shape[0], image_sizes=image_sizes)  # B×2×P
        if not self.prompt_extractor.needs_boxes:
            return self.prompt_extractor(grid, prompt)
        if boxes is None:
            boxes = whole_image_boxes(grid.shape[0], image_sizes, self.frame_hw, device=grid.device)
        key_pe = (self.prompt_encoder.dense_pe(tuple(grid.shape[-2:])) if self.prompt_extractor.sam_key_pe else None)
        return self.prompt_extractor(grid, prompt, boxes.to(grid.dtype), self.frame_hw, key_pe)

    def visual_tokens(self, images: torch.Tensor, boxes: torch.Tensor | None = None,
                      image_sizes: torch.Tensor | None = None, features: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (f_l B×N×D visual tokens, image feature grid B×C×H×W): :meth:`image_features` then
        :meth:`prompt_tokens`."""
        grid = self.image_features(images, image_sizes, features)
        return self.prompt_tokens(grid, boxes, image_sizes), grid

    def encoder_inputs(self, visual: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 encoder input [f_l ; E_w(prompt ids)] → (inputs_embeds B×(N+P)×D, attention_mask B×(N+P) long)."""
        words = self.language_model.embed_tokens(prompt_ids)                           # B×P×D
        if prompt_mask is None:
            prompt_mask = prompt_ids != self.language_model.pad_token_id
        ones = torch.ones(visual.shape[:2], dtype=torch.long, device=visual.device)
        mask = torch.cat([ones, prompt_mask.to(device=visual.device, dtype=torch.long)], dim=1)
        return torch.cat([visual.to(words.dtype), words], dim=1), mask

    # --- training forward --------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None, prompt_ids: torch.Tensor,
                prompt_mask: torch.Tensor | None, target_ids: torch.Tensor, target_mask: torch.Tensor | None = None,
                image_sizes: torch.Tensor | None = None, features: torch.Tensor | None = None) -> PixelLLMOutput:
        """Teacher forcing: decoder inputs = shift_right(target_ids) (start token <pad>).

        images B×3×S×S [0, 1]; boxes B×4 pixels or None; prompt_ids/mask B×P; target_ids/mask B×T
        (pad 0, EOS at the end; ``target_mask`` is used by the loss, not here); image_sizes B×2 (h, w);
        features: :meth:`frozen_image_features` of these images (optional, e.g. cached per image).
        """
        visual, grid = self.visual_tokens(images, boxes, image_sizes, features)
        embeds, mask = self.encoder_inputs(visual, prompt_ids, prompt_mask)
        logits, hidden = self.decode_targets(embeds, mask, target_ids)
        cell_logits = None
        if isinstance(self.trace_head, PointerHead):
            points, cell_logits = self.trace_head(hidden, self.frame_hw, self.head_grid(grid, images),
                                                  return_logits=True)
        else:
            points = self.trace_head(hidden, self.frame_hw, grid)                      # B×T×4 pixels
        return PixelLLMOutput(logits=logits, points=points, hidden=hidden, cell_logits=cell_logits)

    def head_grid(self, grid: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The grid the trace head reads: V(I), or a pointer head's finer grid with its stem (``pointer_stem``)."""
        fn = getattr(self.trace_head, "head_grid", None)
        return grid if fn is None else fn(grid, images)

    @property
    def reads_before_pointing(self) -> bool:
        """Whether word i's point comes from the decoder state that has *read* w_i (``point_state="read"``,
        not in the paper) rather than the state that predicts it (the paper's Eq. 1)."""
        return getattr(self.config, "point_state", "emit") == "read"

    def decode_targets(self, embeds: torch.Tensor, mask: torch.Tensor, target_ids: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced decoder pass → (logits B×T×V predicting ``target_ids``, the states B×T×D the trace
        head reads for them). With ``point_state="read"`` the decoder runs one position further, so the
        state of w_i is the one whose input is w_i (for the last target token: the state that read it)."""
        decoder_input_ids = self.language_model.shift_right(target_ids)                # B×T
        if not self.reads_before_pointing:
            return self.language_model(embeds, mask, decoder_input_ids)
        decoder_input_ids = torch.cat([decoder_input_ids, target_ids[:, -1:]], dim=1)  # B×(T+1)
        logits, hidden = self.language_model(embeds, mask, decoder_input_ids)
        return logits[:, :-1], hidden[:, 1:]

    # --- inference -----------------------------------------------------------------------------------------
    def _tokenize_prompts(self, prompts: str | Sequence[str], batch_size: int, tokenizer: Any
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        if tokenizer is None:
            raise ValueError("PixelLLM: a tokenizer (AutoTokenizer.from_pretrained(dir)) is needed to tokenize prompts")
        if isinstance(prompts, str):
            prompts = [prompts] * batch_size
        if len(prompts) != batch_size:
            raise ValueError(f"PixelLLM: {len(prompts)} prompts for {batch_size} images")
        enc = tokenizer(list(prompts), padding=True, return_tensors="pt")              # adds EOS (T5 convention)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device).bool()

    @staticmethod
    def gather_generated_states(gen: Any, num_beams: int = 1) -> torch.Tensor:
        """Per-token decoder states of the returned sequences from a ``generate(..., output_hidden_states=True,
        return_dict_in_generate=True)`` output → B×T×D, T = sequences.shape[1] − 1 (the start token
        has no state). Step t's state is the one that emitted token t; with beams, ``beam_indices`` says
        which of the B·num_beams rows produced the returned sequence's token t."""
        steps = [layers[-1][:, -1] for layers in gen.decoder_hidden_states]            # T × (B·nb)×D
        states = torch.stack(steps, dim=1)                                              # (B·nb)×T×D
        t = gen.sequences.shape[1] - 1
        states = states[:, :t]
        if num_beams == 1:
            return states
        idx = gen.beam_indices[:, :t].long().clamp(min=0)                               # B×T rows (−1 after end)
        steps_idx = torch.arange(t, device=states.device).expand_as(idx)
        return states[idx, steps_idx]                                                   # B×T×D

    @torch.no_grad()
    def generate(self, images: torch.Tensor, boxes: torch.Tensor | None = None,
                 prompt: str | Sequence[str] = "A long image caption:", tokenizer: Any = None,
                 num_beams: int = 1, max_new_tokens: int = 32, image_sizes: torch.Tensor | None = None,
                 features: torch.Tensor | None = None, with_trace: bool = True,
                 prompt_ids: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None,
                 **generate_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Greedy (num_beams=1) or beam search with HF ``generate`` (KV cache); ``generate_kwargs`` go to
        HF ``generate`` (e.g. ``min_new_tokens``, ``length_penalty``).

        → (tokens B×T without the start token, hidden B×T×D or None, points B×T×4 pixels or None).
        The trace head runs on the gathered states after decoding; its output is never fed back. With
        ``point_state="read"`` the states are those that have read each token: greedy, the emitting states
        shifted by one plus one decoder step on the generation's cache for the last token; with beams, one
        teacher-forced decoder pass over the returned sequences.
        """
        with eval_mode(self):
            b = images.shape[0]
            if prompt_ids is None:
                prompt_ids, prompt_mask = self._tokenize_prompts(prompt, b, tokenizer)
            visual, grid = self.visual_tokens(images, boxes, image_sizes, features)
            embeds, mask = self.encoder_inputs(visual, prompt_ids, prompt_mask)
            lm = self.language_model
            read = with_trace and self.reads_before_pointing
            # the read state needs the decoder once more after generation: encode once for both
            encoded = lm.encode(embeds, mask) if read else None
            gen = lm.generate(embeds, mask, encoder_states=encoded, max_new_tokens=max_new_tokens,
                              num_beams=num_beams, do_sample=False,
                              num_return_sequences=1, output_hidden_states=with_trace and (not read or num_beams == 1),
                              return_dict_in_generate=True, pad_token_id=lm.pad_token_id,
                              eos_token_id=lm.eos_token_id, decoder_start_token_id=lm.t5.config.decoder_start_token_id,
                              **generate_kwargs)
            tokens = gen.sequences[:, 1:]
            if not with_trace:
                return tokens, None, None
            if read and num_beams == 1:
                # the state that has read token t is the one that emitted token t + 1; the last token's is one
                # more decoder step on the generation's cache
                emitted = self.gather_generated_states(gen, 1)                          # B×T×D
                last = lm.decode(encoded, mask, gen.sequences[:, -1:], cache=gen.past_key_values)   # B×1×D
                hidden = torch.cat([emitted[:, 1:], last], dim=1)
            elif read:                          # beams: the states that have read each token, one pass
                hidden = lm.decode(encoded, mask, gen.sequences)[:, 1:]
            else:
                hidden = self.gather_generated_states(gen, num_beams)
            points = self.trace_head(hidden, self.frame_hw, self.head_grid(grid, images))
            return tokens, hidden, points

    def _lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the first EOS per row (= number of tokens before it); T when there is none."""
        is_eos = tokens == self.language_model.eos_token_id
        t = tokens.shape[1]
        first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(tokens[:, 0], t))
        return first

    @torch.no_grad()
    def caption(self, images: torch.Tensor, boxes: torch.Tensor | None = None,
                prompt: str | Sequence[str] = "A long image caption:", tokenizer: Any = None,
                num_beams: int = 1, max_new_tokens: int = 32, image_sizes: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> list[dict[str, Any]]:
        """Caption each image (optionally inside a box prompt) and localise every word.

        Returns one dict per image: ``text`` (decoded, special tokens skipped), ``tokens`` (list[str]),
        ``token_ids`` (list[int]) and ``points`` (T×4 tensor, (x0, y0, x1, y1) pixels of the S×S input
        frame) — T tokens up to, not including, EOS.
        """
        tokens, _hidden, points = self.generate(images, boxes, prompt, tokenizer, num_beams, max_new_tokens,
                                                image_sizes, features)
        out = []
        for row, pts, n in zip(tokens.tolist(), points.cpu(), self._lengths(tokens).tolist()):
            ids = row[:n]
            out.append({"text": tokenizer.decode(ids, skip_special_tokens=True),
                        "tokens": tokenizer.convert_ids_to_tokens(ids),
                        "token_ids": ids,
                        "points": pts[:n]})
        return out

    @torch.no_grad()
    def locate(self, images: torch.Tensor, expressions: Sequence[str], tokenizer: Any,
               template: str = "where is {}", max_new_tokens: int = 16,
               image_sizes: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """Referring localization (PAPER_NOTES.md §3): whole-image prompt, text "where is <expr>"; the decoder
        state that emits EOS regresses the box → B×4 (x0, y0, x1, y1) pixels of the S×S input frame.
        Rows that never emit EOS within ``max_new_tokens`` use their last state (counted in a warning)."""
        prompts = [template.format(e) for e in expressions]
        tokens, _hidden, points = self.generate(images, None, prompts, tokenizer, 1, max_new_tokens,
                                                image_sizes, features)
        first = self._lengths(tokens)
        missing = int((first >= tokens.shape[1]).sum())
        if missing:
            warnings.warn(f"PixelLLM.locate: {missing}/{len(first)} expressions emitted no EOS in "
                          f"{max_new_tokens} tokens; used the last state")
        idx = first.clamp(max=tokens.shape[1] - 1)
        return points[torch.arange(len(idx), device=points.device), idx]              # B×4

    # --- persistence -------------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights + buffers of the trainable non-LM parts (semantic encoder, extractor, head)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(TRAINABLE_PREFIXES)}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (trainable parts) + ``lora/`` (peft adapter).
        Frozen bases are referenced by the config's paths (``sam_checkpoint``, ``t5``), not duplicated; a
        base with no path (random init) is saved too (``frozen_sam.safetensors`` / ``t5/``) so the round trip
        is exact."""
        from dataclasses import asdict

        from safetensors.torch import save_file

        from ..utils import atomic_write_bytes

        if self.config is None:
            raise ValueError("PixelLLM.save_pretrained needs the model's config (build it with build_pixelllm)")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.config)
        atomic_write_bytes(d / CONFIG_NAME, (json.dumps(cfg, indent=2) + "\n").encode())
        save_file({k: v.detach().contiguous().cpu() for k, v in self.trainable_state_dict().items()},
                  str(d / WEIGHTS_NAME))
        if self.config.sam_checkpoint is None:
            frozen = {k: v for k, v in self.state_dict().items()
                      if k.startswith(("image_encoder.sam_encoder.", "prompt_encoder."))}
            save_file({k: v.detach().contiguous().cpu() for k, v in frozen.items()}, str(d / FROZEN_SAM_NAME))
        lm = self.language_model
        if lm.mode == "lora":
            lm.model.save_pretrained(str(d / LORA_DIR))
        if lm.mode == "full" or self.config.t5 is None:
            from transformers import T5ForConditionalGeneration

            base = T5ForConditionalGeneration(lm.t5.config)
            base.load_state_dict(lm.base_state_dict())
            base.save_pretrained(str(d / T5_DIR))
        return d
