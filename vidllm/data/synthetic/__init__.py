"""A procedurally generated video-QA world that the project can train on and measure exactly.

Videos of moving 2D shapes (circle, square, triangle, star) in six fixed colours over plain or
textured backgrounds. Every object moves in a straight line (left, right, up or down) and is on
screen only in its appearance window; some are short-lived (on screen for 5-15% of the video)
and some small (1/12 to 1/8 of the frame width), which is where prompt-guided frame selection and
RoI cropping (Free Video-LLM, Han et al., 2024, arXiv:2410.10441) should beat uniform sampling: a
question about a short-lived object can only be answered from the frames of its window.

- :mod:`~vidllm.data.synthetic.scene`: scenes, objects, the world's distributions, seeds per split.
- :mod:`~vidllm.data.synthetic.render`: ``render(scene, num_frames, size)`` in a few ms.
- :mod:`~vidllm.data.synthetic.questions`: templates, the answer key, targeted and balanced sets.
- :mod:`~vidllm.data.synthetic.dataset`: torch datasets yielding
  ``(frames, timestamps, question, answer, meta)``.
- :mod:`~vidllm.data.synthetic.writer`: the test split as mp4 + Video-ChatGPT / MVBench JSON;
  ``python -m vidllm.data.synthetic write --split test --out DIR``.
"""

from vidllm.data.synthetic.dataset import QuestionSetDataset, Sample, SyntheticVideoQA, collate, make_sample
from vidllm.data.synthetic.questions import (
    LETTERS,
    MC_FORMAT,
    TEMPLATES,
    Question,
    QuestionSet,
    answer_space,
    format_mc,
    make_question,
    pose,
    sample_item,
    sample_question,
    template_probabilities,
    well_posed,
)
from vidllm.data.synthetic.render import render, render_background
from vidllm.data.synthetic.scene import (
    COLOR_RGB,
    COLORS,
    DIRECTIONS,
    SHAPES,
    SPLITS,
    Scene,
    SceneObject,
    WorldConfig,
    sample_scene,
    split_rng,
)
from vidllm.data.synthetic.writer import load_split, video_path, write_split

__all__ = [
    "COLORS",
    "COLOR_RGB",
    "DIRECTIONS",
    "LETTERS",
    "MC_FORMAT",
    "SHAPES",
    "SPLITS",
    "TEMPLATES",
    "Question",
    "QuestionSet",
    "QuestionSetDataset",
    "Sample",
    "Scene",
    "SceneObject",
    "SyntheticVideoQA",
    "WorldConfig",
    "answer_space",
    "collate",
    "format_mc",
    "load_split",
    "make_question",
    "make_sample",
    "pose",
    "render",
    "render_background",
    "sample_item",
    "sample_question",
    "sample_scene",
    "split_rng",
    "template_probabilities",
    "video_path",
    "well_posed",
    "write_split",
]
