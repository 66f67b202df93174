"""Our own small pretrained parts, stand-ins for the paper's frozen SAM ViT-H and Flan-T5-XL.

* :mod:`pixelllm.pretrain.sam` — train segment-anything's image encoder + prompt encoder + mask decoder
  (``build_sam("tiny")``) on the synthetic world's instance masks; saves a SAM-format state_dict.
* :mod:`pixelllm.pretrain.t5` — a tiny ``T5Config`` and T5 span-corruption pretraining on the synthetic
  text corpus; saves with ``save_pretrained`` (+ the tokenizer) so it loads like Flan-T5.

Nothing is imported here (``import pixelllm.pretrain`` stays light); import the submodules.
"""
