"""Data: the synthetic world (:mod:`pixelllm.data.synthetic`, vocabulary in :mod:`pixelllm.data.vocab`)
written in the real dataset formats, and the readers of those formats (Localized Narratives, RefCOCO
refer format, Visual Genome, COCO), tokenizer training and torch Datasets.

This package imports nothing on purpose: ``import pixelllm.data`` does no I/O and pulls in no heavy
library; import the sub-module you need.
"""
