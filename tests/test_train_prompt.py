"""The prompt template may name the question before the video (the bundled model's presets do)."""

from __future__ import annotations

import numpy as np
import torch

from vidllm.testing.tiny import tiny_video_llm


def test_question_before_the_video_is_laid_out_there():
    model = tiny_video_llm("llama", num_frames=4)
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    question = "what color is the star ?"
    default = model.prepare(frames, question, reducer="uniform").embeds
    model.config.prompt_template = "Question: {question}\n{video}\nAnswer:"
    first = model.prepare(frames, question, reducer="uniform").embeds
    embed = model.lm.get_input_embeddings()
    prefix = model.tokenizer(f"Question: {question}\n", add_special_tokens=True)["input_ids"]
    start = [*prefix, model.marker_ids["start"]]
    with torch.no_grad():
        torch.testing.assert_close(first[: len(start)], embed(torch.tensor(start)))
    # a template without the field before the video is unchanged by the replacement
    model.config.prompt_template = "{video}\nQuestion: {question}\nAnswer:"
    torch.testing.assert_close(model.prepare(frames, question, reducer="uniform").embeds, default)
