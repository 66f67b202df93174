"""A T5-style tokenizer trained on the synthetic world with the ``tokenizers`` library.

T5 conventions (ARCHITECTURE.md "Tokenizer"): ``<pad>`` id 0, ``</s>`` id 1, ``<unk>`` id 2, then the
learned pieces, then the 100 span-corruption sentinels with T5's id order (``<extra_id_0>`` is the
**last** id, ``<extra_id_99>`` the first sentinel: sentinel i = vocab_size − 1 − i). Like T5's
SentencePiece model it splits on whitespace with the ``▁`` Metaspace marker (so decoding restores the
spaces) and appends ``</s>`` to every encoded text; unlike it we lower-case (the synthetic world has no
proper nouns) and isolate punctuation so "circle." and "circle" share the piece "▁circle".

Model: BPE. ``tokenizers``' Unigram trainer (T5's algorithm) keeps mostly single characters on a
corpus this small and repetitive (a few hundred distinct words), whereas BPE merges every frequent
word into one piece — so most words of the synthetic world are single tokens, which keeps sequences
short and makes the per-word trace targets per-token.

Saved as ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``, loadable with
``transformers.AutoTokenizer.from_pretrained(dir)`` (and by ``tokenizers.Tokenizer.from_file``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from pixelllm.utils import atomic_write_bytes

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
NUM_SENTINELS = 100
MODEL_MAX_LENGTH = 512


def sentinel(i: int) -> str:
    """The i-th span-corruption sentinel, ``<extra_id_i>``."""
    return f"<extra_id_{i}>"


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1000, lowercase: bool = True,
                    min_frequency: int = 1, num_sentinels: int = NUM_SENTINELS):
    """Train and return a ``tokenizers.Tokenizer`` (not saved). ``vocab_size`` counts the 3 specials and
    the learned pieces (the trainer stops earlier when the corpus has no more merges); the sentinels
    come on top, as in T5 (32000 + 100)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),   # "a cat" → "▁a", "▁cat"
        pre_tokenizers.Punctuation("isolated"),                              # "▁cat." → "▁cat", "."
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[PAD, EOS, UNK], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    # T5 order: <extra_id_99> … <extra_id_0>, so <extra_id_0> is the last id.
    tok.add_special_tokens([sentinel(i) for i in reversed(range(num_sentinels))])
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)])
    assert (tok.token_to_id(PAD), eos_id, tok.token_to_id(UNK)) == (0, 1, 2)
    return tok


def save_tokenizer(tok, out_dir: str | os.PathLike, num_sentinels: int = NUM_SENTINELS) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into
    ``out_dir`` (each file atomically; other files in the folder, e.g. a T5 checkpoint, are kept)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentinels = [sentinel(i) for i in range(num_sentinels)]
    special = {"pad_token": PAD, "eos_token": EOS, "unk_token": UNK, "additional_special_tokens": sentinels}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",   # generic fast tokenizer: loads tokenizer.json as is
        **{k: v for k, v in special.items() if k != "additional_special_tokens"},
        "extra_special_tokens": sentinels,              # transformers ≥ 5 name …
        "additional_special_tokens": sentinels,         # … and the older one
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",
    }
    dump = lambda obj: (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()  # noqa: E731
    atomic_write_bytes(out / "special_tokens_map.json", dump(special))
    atomic_write_bytes(out / "tokenizer_config.json", dump(config))
    atomic_write_bytes(out / "tokenizer.json", tok.to_str(pretty=True).encode())
    return out


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 1000,
                    lowercase: bool = True, min_frequency: int = 1, num_sentinels: int = NUM_SENTINELS):
    """Train a T5-style tokenizer on ``texts``, save it to ``out_dir`` and return it loaded through
    ``transformers.AutoTokenizer`` (``tok("a red circle").input_ids`` ends with ``</s>`` = 1)."""
    tok = build_tokenizer(texts, vocab_size=vocab_size, lowercase=lowercase, min_frequency=min_frequency,
                          num_sentinels=num_sentinels)
    save_tokenizer(tok, out_dir, num_sentinels=num_sentinels)
    return load_tokenizer(out_dir)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_tokenizer(path: str | os.PathLike):
    """``transformers.AutoTokenizer.from_pretrained(path)`` (local folder only, no network).

    The folder's JSON files are parsed first, so a truncated or non-UTF-8 ``tokenizer.json`` raises
    :class:`~pixelllm.data.errors.DataFormatError` naming the file and line; a missing folder or
    ``tokenizer.json`` raises ``FileNotFoundError``; anything else the library refuses is re-raised as a
    DataFormatError naming ``tokenizer.json``."""
    from transformers import AutoTokenizer

    from pixelllm.data.errors import DataFormatError, read_json

    folder = Path(path)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer at {folder}: {folder / 'tokenizer.json'} does not exist")
    for name in TOKENIZER_FILES:
        if (folder / name).is_file() and not isinstance(read_json(folder / name), dict):
            raise DataFormatError(folder / name, None, None, "expected a JSON object")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ImportError):
        raise
    except Exception as e:                      # the Rust tokenizers library raises plain Exception
        raise DataFormatError(folder / "tokenizer.json", None, None,
                              f"not a tokenizer the library can load: {type(e).__name__}: {str(e)[:200]}") from None


def corpus_texts(data_root: str | os.PathLike, include_prompts: bool = True) -> list[str]:
    """Every text of the synthetic world under ``data_root`` (ARCHITECTURE.md data layout): LN captions,
    COCO short captions, refer expressions, VG phrases — plus the default task prompts of
    :mod:`pixelllm.data.datasets` so that they tokenise without ``<unk>``. Files that are absent are
    simply not used; real-format readers validate what is there."""
    from pixelllm.data.coco import load_coco_captions
    from pixelllm.data.errors import SkipCounter, read_json
    from pixelllm.data.localized_narratives import iter_localized_narratives, localized_narratives_files
    from pixelllm.data.refcoco import load_refs

    root = Path(data_root)
    quiet = SkipCounter("corpus")            # the loaders' skips do not matter for a text corpus
    texts: list[str] = []
    for p in localized_narratives_files(root / "localized_narratives"):
        texts += [n.caption for n in iter_localized_narratives(p)]
    for p in sorted((root / "captions").glob("*.json")):
        texts += [c for r in load_coco_captions(p, skips=quiet) for c in r["captions"]]
    for p in sorted(root.glob("*/refs(*).p")):
        texts += [str(s.get("raw", s.get("sent", ""))) for r in load_refs(p) for s in r["sentences"]]
    vg = root / "vg" / "region_descriptions.json"
    if vg.exists():
        texts += [r["phrase"].strip() for e in read_json(vg) for r in e["regions"]]
    if include_prompts:
        from pixelllm.data.datasets import DEFAULT_PROMPTS

        texts += [p.replace("{expr}", "").strip() for p in DEFAULT_PROMPTS.values()]
    return [t for t in texts if t.strip()]
