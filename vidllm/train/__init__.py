"""Training the bundled model from scratch on the synthetic world: ``vidllm train --preset NAME``.

- :mod:`~vidllm.train.presets`: named presets (``default``, ``parameternet``, ``smoke``).
- :mod:`~vidllm.train.tokenizer`: the byte-level BPE trained on the world's text.
- :mod:`~vidllm.train.dual_encoder` / :mod:`~vidllm.train.scorer_training`: stage 1, the
  CLIP-style relevance scorer (zoo backbone image tower, small text tower).
- :mod:`~vidllm.train.trainer`: stage 2, the video LLM end to end with accelerate, an optional
  LoRA stage, export and validation; :func:`~vidllm.train.trainer.train` runs the pipeline.
- :mod:`~vidllm.train.loop` / :mod:`~vidllm.train.checkpoint`: the resumable training loop.
- :mod:`~vidllm.train.data`: deterministic training batches from the world.

Importing this package is cheap; the heavy parts load with the module that needs them.
"""

from __future__ import annotations

from vidllm.train.presets import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "get_preset", "train"]


def __getattr__(name: str):
    if name == "train":
        from vidllm.train.trainer import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
