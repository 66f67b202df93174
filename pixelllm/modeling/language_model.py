"""Language model L: a (frozen) T5 encoder-decoder with LoRA adapters from peft.

PixelLLM feeds the T5 **encoder** with ``[f_l ; E(prompt)]`` — the N visual tokens from the prompt
feature extractor followed by the word embeddings of the text prompt (which ends with EOS) — and
decodes the caption. Paper: instruction-tuned T5-XL (Flan-T5-XL), frozen, LoRA rank 32 on q and v of the
self-attention layers. Release: LoRA on the encoder self-attention and decoder self- and cross-attention,
scale 2. B is zero-initialised (peft's default), so a freshly wrapped model equals its base model.

Output scaling (PAPER_NOTES.md §8). HF T5 multiplies the decoder's final state by d_model^-0.5 before
``lm_head`` when ``config.scale_decoder_outputs`` (original T5, tied embeddings); T5 v1.1 / Flan-T5
(``tie_word_embeddings=False`` in their config.json) are not scaled and were trained that way. We keep
HF's choice — it is what the checkpoint was trained with — and :meth:`LanguageModel.logits` reproduces
it. The trace head always reads the state **after the final norm and before any scaling**.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import T5ForConditionalGeneration

LM_MODES = ("frozen", "lora", "full")
# peft target_modules regexes (re.fullmatch on module names of T5ForConditionalGeneration).
LORA_TARGETS = {
    # paper: q and v of every self-attention (encoder and decoder)
    "paper": r".*\.SelfAttention\.(q|v)",
    # official release: encoder self-attention + decoder self- and cross-attention
    "release": r".*\.(SelfAttention|EncDecAttention)\.(q|v)",
}


class LanguageModel(nn.Module):
    """Args:
        t5: a ``T5ForConditionalGeneration`` (``from_pretrained(dir_or_name)`` or built from a T5Config).
        mode: "frozen" (no trainable LM weight), "lora" (paper), "full" (all T5 weights trainable).
        lora_rank / lora_scale (= alpha / rank; release 2) / lora_targets ("paper" | "release" | a regex)
        / lora_dropout.
    """

    def __init__(self, t5: T5ForConditionalGeneration, mode: str = "lora", lora_rank: int = 32,
                 lora_scale: float = 1.0, lora_targets: str = "paper", lora_dropout: float = 0.0) -> None:
        super().__init__()
        if mode not in LM_MODES:
            raise ValueError(f"LanguageModel: mode must be one of {LM_MODES}, got {mode!r}")
        self.mode = mode
        cfg = t5.config
        if cfg.decoder_start_token_id is None:  # T5 convention: decoding starts from <pad>
            cfg.decoder_start_token_id = cfg.pad_token_id
        if t5.generation_config.decoder_start_token_id is None:
            t5.generation_config.decoder_start_token_id = cfg.decoder_start_token_id
        t5.requires_grad_(mode == "full")
        if mode == "lora":
            from peft import LoraConfig, TaskType, get_peft_model

            target = LORA_TARGETS.get(lora_targets, lora_targets)
            lora_cfg = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=lora_rank, lora_alpha=lora_scale * lora_rank,
                                  lora_dropout=lora_dropout, target_modules=target)
            self.model = get_peft_model(t5, lora_cfg)  # freezes the base, LoRA B = 0
        else:
            self.model = t5

    # --- accessors ---------------------------------------------------------------------------------------
    @property
    def t5(self) -> T5ForConditionalGeneration:
        """The T5 model (with LoRA layers injected when mode == "lora")."""
        return self.model.get_base_model() if self.mode == "lora" else self.model

    @property
    def d_model(self) -> int:
        return self.t5.config.d_model

    @property
    def vocab_size(self) -> int:
        return self.t5.config.vocab_size

    @property
    def pad_token_id(self) -> int:
        return self.t5.config.pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self.t5.config.eos_token_id

    def train(self, mode: bool = True) -> "LanguageModel":
        super().train(mode)
        if self.mode == "frozen":
            self.model.eval()  # no dropout in a frozen LM
        return self

    # --- computation -------------------------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """B×P token ids → B×P×D word embeddings (T5's shared input embedding)."""
        return self.t5.get_input_embeddings()(ids)

    def shift_right(self, target_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing decoder inputs: [start=<pad>, w_1 .. w_{T-1}] (B×T)."""
        return self.t5._shift_right(target_ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Decoder states after the final norm (B×T×D) → vocabulary logits B×T×V, exactly as
        ``T5ForConditionalGeneration.forward`` does (d_model^-0.5 scaling only when HF scales)."""
        t5 = self.t5
        if getattr(t5.config, "scale_decoder_outputs", getattr(t5.config, "tie_word_embeddings", True)):
            hidden = hidden * (t5.config.d_model ** -0.5)
        return t5.lm_head(hidden)

    def encode(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """T5 encoder over inputs_embeds B×L×D with attention_mask B×L → B×L×D."""
        return self.t5.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state

    def decode(self, encoder_states: torch.Tensor, attention_mask: torch.Tensor,
               decoder_input_ids: torch.Tensor, cache: Any = None) -> torch.Tensor:
        """Teacher-forced T5 decoder → last hidden state B×T×D (after the final norm, before lm_head).
        No decoder attention mask: the causal mask suffices for right-padded targets, and it matches what
        ``generate`` computes. ``cache``: the KV cache of the positions before ``decoder_input_ids`` (e.g. a
        ``generate`` output's ``past_key_values``), so only the new positions are computed."""
        kw = {"cache": cache, "use_cache": True} if cache is not None else {}
        return self.t5.decoder(input_ids=decoder_input_ids, encoder_hidden_states=encoder_states,
                               encoder_attention_mask=attention_mask, **kw).last_hidden_state

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                decoder_input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (logits B×T×V, hidden B×T×D)."""
        hidden = self.decode(self.encode(inputs_embeds, attention_mask), attention_mask, decoder_input_ids)
        return self.logits(hidden), hidden

    def generate(self, inputs_embeds: torch.Tensor | None, attention_mask: torch.Tensor,
                 encoder_states: torch.Tensor | None = None, **kwargs: Any):
        """HF ``generate`` (KV cache) on the T5 with adapters; kwargs go to ``generate``. ``encoder_states``
        (B×L×D, :meth:`encode` of the inputs) skips the encoder, for a caller that needs them again."""
        if encoder_states is not None:
            from transformers.modeling_outputs import BaseModelOutput

            return self.t5.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states),
                                    attention_mask=attention_mask, **kwargs)
        return self.t5.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The T5 weights without LoRA (keys as in a plain ``T5ForConditionalGeneration``)."""
        out = {}
        for k, v in self.t5.state_dict().items():
            if "lora_" in k:
                continue
            out[k.replace(".base_layer.", ".")] = v
        return out


def load_t5(local_dir: str | os.PathLike):
    """(model, tokenizer) from a ``save_pretrained`` folder — the very calls that load Flan-T5."""
    from transformers import AutoTokenizer

    return T5ForConditionalGeneration.from_pretrained(local_dir), AutoTokenizer.from_pretrained(local_dir)
