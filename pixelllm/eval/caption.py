"""Caption metrics (BLEU-4, METEOR, ROUGE-L, CIDEr-D) with pycocoevalcap's scorers, offline.

We call pycocoevalcap's scorers directly — ``PTBTokenizer`` (Java), ``Bleu(4)``, ``Meteor`` (Java),
``Rouge`` and ``Cider`` — and never ``COCOEvalCap.evaluate()``: that one always builds SPICE, which
downloads Stanford CoreNLP and fails offline (PAPER_NOTES.md §4).

Facts worth knowing when reading the numbers:

* **pycocoevalcap's ``Cider`` is CIDEr-D** (Vedantam et al. 2015, §"CIDEr-D"): it clips the candidate's
  n-gram tf-idf weights at the reference's (``min(vec_hyp, vec_ref)`` in ``cider_scorer.py``), applies
  the Gaussian length penalty ``exp(-(l_c - l_r)^2 / (2·6^2))``, does no stemming, and multiplies by 10.
  That is the metric papers report as "CIDEr" on COCO, hence our key ``"CIDEr-D"``.
* **CIDEr's IDF comes from the evaluated set itself** (document frequency over the references of the
  images being scored). On a tiny or homogeneous set (e.g. a synthetic world where every caption uses
  the same 20 words) the IDF is degenerate; such numbers are *not* comparable to published ones.
* METEOR is run the way coco-caption runs it (``meteor-1.5.jar -l en -norm``), over all records in
  **one** Java process (one ``EVAL`` line), which is also what DenseCap mAP needs per record
  (:func:`meteor_scores`).
* Captions are PTB-tokenised (lower-cased, punctuation dropped) before BLEU/METEOR/ROUGE/CIDEr,
  as ``COCOEvalCap`` does.

Robustness: empty strings are allowed (an empty candidate scores 0); newlines and METEOR's field
separator ``|||`` are stripped from every text so that they cannot break the Java line protocols.
"""
from __future__ import annotations

import os
import shutil
from typing import Hashable, Iterable, Mapping, Sequence

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")
DEFAULT_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")


def _require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            "caption metrics: `java` is not on PATH; pycocoevalcap's PTB tokenizer and METEOR need a Java "
            "runtime (e.g. apt-get install openjdk-17-jre-headless)")


def _clean(text: str) -> str:
    """One line of plain text: no newlines (line protocols) and no '|||' (METEOR's field separator)."""
    if not isinstance(text, str):
        raise TypeError(f"caption metrics: expected a str, got {type(text).__name__}: {text!r}")
    return " ".join(text.replace("|||", " ").split())


class Meteor:
    """One METEOR 1.5 Java process (pycocoevalcap's wrapper), closed deterministically.

    Usage::

        with Meteor() as m:
            scores = m([("a red circle", ["a red circle on the left"]), ...])   # list[float] in [0, 1]

    The process loads the paraphrase table once (several seconds), so create one per evaluation and
    score every record in a single call. ``close()`` kills the process; it is also called on
    ``__exit__`` and (as a fallback) on garbage collection.
    """

    def __init__(self) -> None:
        _require_java()
        from pycocoevalcap.meteor.meteor import Meteor as _CocoMeteor

        self._m = _CocoMeteor()
        self._closed = False

    def __call__(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> list[float]:
        """Per-record METEOR of ``(candidate, [references...])`` pairs, in input order (list of floats)."""
        return self.compute(pairs)[1]

    def compute(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> tuple[float, list[float]]:
        """``(corpus METEOR, per-record METEOR)`` of ``(candidate, [references...])`` pairs.

        The corpus score is the jar's aggregate over the pooled statistics of all records (what
        pycocoevalcap reports), not the mean of per-record scores. A record with no references scores
        0.0 and is left out of the corpus score (it is not sent to Java: METEOR needs ≥ 1 reference).
        """
        if self._closed:
            raise RuntimeError("Meteor: this scorer was closed")
        scores = [0.0] * len(pairs)
        gts, res, where = {}, {}, []
        for i, (cand, refs) in enumerate(pairs):
            if isinstance(refs, str):
                raise TypeError(f"Meteor: references of record {i} must be a list of str, got a str {refs!r}")
            refs = [_clean(r) for r in refs]
            if not refs:
                continue
            gts[len(where)] = refs
            res[len(where)] = [_clean(cand)]
            where.append(i)
        corpus = 0.0
        if where:
            try:
                corpus, per_record = self._m.compute_score(gts, res)  # one EVAL line for all records
            except Exception as e:  # e.g. the JVM died (out of memory): its reply is not a number
                if self._m.lock.locked():  # pycocoevalcap does not release its lock on errors
                    self._m.lock.release()
                self.close()
                raise RuntimeError(f"METEOR: the Java process failed while scoring {len(where)} records") from e
            for i, s in zip(where, per_record):
                scores[i] = float(s)
        return float(corpus), scores

    def close(self) -> None:
        """Stop the Java process (idempotent)."""
        if self._closed:
            return
        self._closed = True
        p = self._m.meteor_p
        with self._m.lock:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None and not stream.closed:
                    try:
                        stream.close()
                    except OSError:  # broken pipe: the JVM is already gone
                        pass
            p.kill()  # no-op when already exited
            p.wait()
        # pycocoevalcap's own __del__ repeats close/kill/wait later; both are harmless on a dead process.

    def __enter__(self) -> "Meteor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass


def meteor_scores(pairs: Sequence[tuple[str, Sequence[str]]], meteor: Meteor | None = None) -> list[float]:
    """Per-record METEOR of ``(candidate, [references...])`` pairs in ONE Java process.

    Texts are scored as given (METEOR's ``-norm`` lower-cases and normalises punctuation), like the
    official DenseCap evaluator. Pass an open :class:`Meteor` to reuse its process; otherwise one is
    started and closed here.
    """
    if meteor is not None:
        return meteor(pairs)
    if not pairs:
        return []
    with Meteor() as m:
        return m(pairs)


def ptb_tokenize(texts: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """PTB-tokenise ``{key: [caption, ...]}`` with pycocoevalcap's ``PTBTokenizer`` (one Java call).

    Lower-cases and removes punctuation tokens. Empty captions (and captions that are only whitespace)
    stay ``""`` without going through Java: the tokenizer reads one line per caption and a trailing
    empty line would shift every later caption.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = {k: [""] * len(v) for k, v in texts.items()}
    flat, where = {}, []
    for k, caps in texts.items():
        if isinstance(caps, str):
            raise TypeError(f"ptb_tokenize: value for key {k!r} must be a list of str, got a str")
        for j, c in enumerate(caps):
            c = _clean(c)
            if c:
                flat[len(where)] = [{"caption": c}]
                where.append((k, j))
    if where:
        _require_java()
        tok = PTBTokenizer().tokenize(flat)
        if len(tok) != len(where):
            raise RuntimeError(f"ptb_tokenize: PTBTokenizer returned {len(tok)} lines for {len(where)} captions")
        for i, (k, j) in enumerate(where):
            out[k][j] = tok[i][0]
    return out


def caption_metrics(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    metrics: Iterable[str] = DEFAULT_METRICS,
    tokenize: bool = True,
    meteor: Meteor | None = None,
    return_per_item: bool = False,
) -> dict:
    """Corpus caption metrics of ``predictions`` against ``references`` (pycocoevalcap scorers).

    Args:
      predictions: ``{id: caption}`` — one generated caption per item (image or region).
      references: ``{id: [ref caption, ...]}`` — ≥ 1 reference per item; every prediction id must be here.
        Reference ids without a prediction are not scored; their count is returned as ``num_unpredicted``.
      metrics: any of ``CAPTION_METRICS`` ("BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D").
      tokenize: PTB-tokenise predictions and references first (as COCOEvalCap does).
      meteor: an open :class:`Meteor` to reuse (else one is started and closed here, if METEOR is asked).
      return_per_item: also return ``per_item = {metric: {id: score}}``.

    Returns:
      ``{metric: float, ..., "num_items": n, "num_unpredicted": k}`` with BLEU/METEOR/ROUGE-L in [0, 1]
      and CIDEr-D in [0, 10] (×100 for the usual percentages). CIDEr-D's IDF comes from these
      references: tiny sets are not comparable to published numbers.
    """
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in CAPTION_METRICS]
    if unknown:
        raise ValueError(f"caption_metrics: unknown metrics {unknown}; choose from {CAPTION_METRICS}")
    missing = [k for k in predictions if k not in references]
    if missing:
        raise ValueError(f"caption_metrics: {len(missing)} prediction ids have no references, e.g. {missing[:5]}")
    ids = list(predictions)
    if not ids:
        raise ValueError("caption_metrics: no predictions to score")
    no_refs = [k for k in ids if len(references[k]) == 0]
    if no_refs:
        raise ValueError(f"caption_metrics: {len(no_refs)} ids have an empty reference list, e.g. {no_refs[:5]}")

    # Internal integer keys: pycocoevalcap asserts gts.keys() == res.keys() and keeps insertion order.
    res = {i: [predictions[k]] for i, k in enumerate(ids)}
    gts = {i: list(references[k]) for i, k in enumerate(ids)}
    if tokenize:
        both = ptb_tokenize({**{("r", i): v for i, v in res.items()}, **{("g", i): v for i, v in gts.items()}})
        res = {i: both[("r", i)] for i in res}
        gts = {i: both[("g", i)] for i in gts}
    else:
        res = {i: [_clean(c) for c in v] for i, v in res.items()}
        gts = {i: [_clean(c) for c in v] for i, v in gts.items()}

    out: dict = {}
    per_item: dict = {}
    bleu_wanted = [m for m in metrics if m.startswith("BLEU-")]
    if bleu_wanted:
        from pycocoevalcap.bleu.bleu import Bleu

        score, scores = Bleu(4).compute_score(gts, res, verbose=0)
        for m in bleu_wanted:
            n = int(m.split("-")[1])
            out[m] = float(score[n - 1])
            per_item[m] = [float(s) for s in scores[n - 1]]
    if "METEOR" in metrics:
        pairs = [(res[i][0], gts[i]) for i in res]
        if meteor is not None:
            corpus, s = meteor.compute(pairs)
        else:
            with Meteor() as m:
                corpus, s = m.compute(pairs)
        out["METEOR"], per_item["METEOR"] = corpus, s
    if "ROUGE-L" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        score, scores = Rouge().compute_score(gts, res)
        out["ROUGE-L"], per_item["ROUGE-L"] = float(score), [float(s) for s in scores]
    if "CIDEr-D" in metrics:
        from pycocoevalcap.cider.cider import Cider

        score, scores = Cider().compute_score(gts, res)
        out["CIDEr-D"], per_item["CIDEr-D"] = float(score), [float(s) for s in scores]

    result = {m: out[m] for m in metrics}
    result["num_items"] = len(ids)
    result["num_unpredicted"] = sum(1 for k in references if k not in predictions)
    if return_per_item:
        result["per_item"] = {m: dict(zip(ids, per_item[m])) for m in metrics}
    return result
