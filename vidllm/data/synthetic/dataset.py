"""Datasets over the synthetic world: videos rendered on the fly, deterministic per index.

Each item is a :class:`Sample` ``(frames, timestamps, question, answer, meta)``: ``frames`` is
``(T, H, W, 3)`` uint8 RGB spanning the whole video (frame ``i`` at ``i / T`` of it, so
``T = 50`` gives the paper's 50 uniformly sampled frames), ``timestamps`` their presentation
times in seconds. ``meta`` says what evaluation slices on: template, multiple-choice flag and
options, the open answer, the subject objects' tags and windows, and for each subject the frame
indices where it is on screen (empty lists mean the frames missed it: with few frames a
short-lived object can fall between two).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from vidllm.data.synthetic.questions import Question, QuestionSet, sample_item
from vidllm.data.synthetic.render import render
from vidllm.data.synthetic.scene import Scene, WorldConfig, split_rng


class Sample(NamedTuple):
    frames: np.ndarray  # (T, H, W, 3) uint8
    timestamps: np.ndarray  # (T,) float64 seconds
    question: str
    answer: str
    meta: dict


def make_sample(
    scene: Scene,
    question: Question,
    *,
    mc: bool,
    num_frames: int,
    size: tuple[int, int],
    compress: bool = False,
    frames: np.ndarray | None = None,
) -> Sample:
    """Render ``scene`` and pair it with ``question`` (open-ended or multiple choice)."""
    if frames is None:
        frames = render(scene, num_frames, size)
    timestamps = scene.timestamps(num_frames)
    if compress:
        from vidllm.data.synthetic.writer import h264_roundtrip

        frames = h264_roundtrip(frames, fps=num_frames / scene.duration)
    times = scene.frame_times(num_frames)
    subjects = [scene.objects[i] for i in question.subjects]
    meta = {
        "video_id": scene.video_id,
        "question_id": question.question_id,
        "template": question.template,
        "mc": mc,
        "options": list(question.options),
        "answer_text": question.answer,
        "answer_letter": question.answer_letter,
        "short_lived": question.short_lived,
        "small": question.small,
        "windows": question.windows_seconds(scene.duration),
        "subjects": [o.description for o in subjects],
        "visible_frames": [np.flatnonzero(o.visible(times)).tolist() for o in subjects],
    }
    return Sample(frames, timestamps, question.prompt(mc), question.target(mc), meta)


class SyntheticVideoQA(Dataset):
    """Training items: one scene built for one question per index, never stored.

    Item ``i`` of ``split`` draws everything from the stream ``(split, i)``: a template and an
    answer uniformly, the subject's tags at the configured shares, a scene built for them, and
    the multiple-choice form with probability ``mc_share``. ``compress`` passes the frames
    through H.264 as the written test split is (about 0.1 s per 50-frame 96x96 item here, ten times
    the rendering: measure with ``python -m vidllm.data.synthetic bench --compress``).
    """

    def __init__(
        self,
        split: str = "train",
        num_samples: int = 100_000,
        *,
        num_frames: int = 50,
        size: tuple[int, int] = (96, 96),
        config: WorldConfig | None = None,
        mc_share: float = 0.5,
        compress: bool = False,
        world_seed: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0 <= mc_share <= 1:
            raise ValueError(f"mc_share must be a probability, got {mc_share}")
        self.split, self.num_samples = split, num_samples
        self.num_frames, self.size = num_frames, tuple(size)
        self.config = config or WorldConfig()
        self.mc_share, self.compress, self.world_seed = mc_share, compress, world_seed
        split_rng(split, 0, world_seed)  # validates the split name now

    def __len__(self) -> int:
        return self.num_samples

    def item(self, index: int) -> tuple[Scene, Question, bool]:
        """The scene, the question and whether it is asked as multiple choice (no rendering)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = split_rng(self.split, index, self.world_seed)
        video_id = f"synthetic_{self.split}_{index:07d}"
        scene, question = sample_item(rng, self.config, video_id, f"{video_id}_q0")
        return scene, question, bool(rng.random() < self.mc_share)

    def __getitem__(self, index: int) -> Sample:
        scene, question, mc = self.item(index)
        return make_sample(
            scene, question, mc=mc, num_frames=self.num_frames, size=self.size, compress=self.compress
        )


class QuestionSetDataset(Dataset):
    """The questions of a fixed :class:`QuestionSet` (validation, test), rendered on the fly.

    Questions about one video are consecutive; the last rendered video is kept, so iterating in
    order renders each video once.
    """

    def __init__(
        self,
        question_set: QuestionSet,
        *,
        num_frames: int = 50,
        size: tuple[int, int] = (96, 96),
        mc: bool = False,
        compress: bool = False,
    ) -> None:
        self.question_set = question_set
        self.num_frames, self.size, self.mc, self.compress = num_frames, tuple(size), mc, compress
        self._last: tuple[str, np.ndarray] | None = None

    @classmethod
    def build(cls, split: str = "validation", num_videos: int = 100, questions_per_video: int = 3, **kwargs):
        """Build the split's question set (``config``, ``world_seed`` go to it) and wrap it."""
        set_kwargs = {k: kwargs.pop(k) for k in ("config", "world_seed", "max_questions") if k in kwargs}
        return cls(QuestionSet.build(split, num_videos, questions_per_video, **set_kwargs), **kwargs)

    def __len__(self) -> int:
        return len(self.question_set.questions)

    def __getitem__(self, index: int) -> Sample:
        question = self.question_set.questions[index]
        scene = self.question_set.scene(question.video_id)
        if self._last is None or self._last[0] != scene.video_id:
            self._last = (scene.video_id, render(scene, self.num_frames, self.size))
        return make_sample(
            scene,
            question,
            mc=self.mc,
            num_frames=self.num_frames,
            size=self.size,
            compress=self.compress,
            frames=self._last[1].copy(),  # a consumer may write into its frames
        )


def collate(samples: list[Sample]) -> dict:
    """Batch samples of one frame count and size: frames ``(B, T, H, W, 3)`` uint8, the rest as lists."""
    return {
        "frames": torch.from_numpy(np.stack([s.frames for s in samples])),
        "timestamps": torch.from_numpy(np.stack([s.timestamps for s in samples])),
        "questions": [s.question for s in samples],
        "answers": [s.answer for s in samples],
        "meta": [s.meta for s in samples],
    }
