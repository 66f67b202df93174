"""Our own small pretrained parts, stand-ins for the paper's frozen SAM ViT-H, Flan-T5-XL and pretrained EVA02.

* :mod:`pixelllm.pretrain.sam` — train segment-anything's image encoder + prompt encoder + mask decoder
  (``build_sam("tiny")``) on the synthetic world's instance masks; saves a SAM-format state_dict.
* :mod:`pixelllm.pretrain.t5` — the tiny T5 (widths: ``pixelllm.modeling.build.tiny_t5_config``) pretrained
  with span corruption on the synthetic text corpus; saves with ``save_pretrained`` (+ the tokenizer) so it
  loads like Flan-T5.
* :mod:`pixelllm.pretrain.semantic` — the semantic ViT pretrained on per-patch colour / category targets;
  saves a safetensors state_dict.
* :mod:`pixelllm.pretrain.common` — what the three share around the one training loop
  (:class:`pixelllm.engine.trainer.Trainer`): checkpoints beside the artifact, resume, the run's history.

Each is a task with ``computes_own_loss = True`` trained by the Trainer with its typed config
(``get_config("sam_tiny" | "t5_tiny" | "semantic_tiny")``): a fixed number of steps, exact resume.
Nothing is imported here (``import pixelllm.pretrain`` stays light); import the submodules.
"""
