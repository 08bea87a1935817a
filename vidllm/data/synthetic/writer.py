"""Write a fixed split to disk as H.264 mp4 files and benchmark-layout JSON annotations.

Layout of ``out_dir`` (the eval harness reads it as the tasks ``synthetic-qa`` and
``synthetic-mc``):

- ``videos/<video_id>.mp4``: H.264, yuv420p, ``fps`` frames per second, ``seconds`` long.
- ``synthetic_qa_questions.json``: ``[{video_name, question, question_id}]`` and
  ``synthetic_qa_answers.json``: ``[{answer, type, question_id, ...}]``, in the same order, the
  Video-ChatGPT open-ended layout (MSVD-QA, ActivityNet-QA); ``video_name`` has no extension and
  ``type`` is the template name. The answers file also carries ``template``, ``short_lived``,
  ``small``, ``windows`` (the subject objects' on-screen windows in seconds: frame ``i`` at
  ``i / fps`` shows the object when ``start <= i / fps < end``), ``subjects`` (their
  descriptions) and the multiple-choice fields.
- ``synthetic_mc.json``: ``[{video, question, candidates, answer, ...}]``, the MVBench item
  layout: ``video`` is the file name under ``videos/``, ``answer`` the correct candidate's text;
  extra fields ``question_id``, ``answer_letter``, ``prompt`` (the question with its options
  appended, :data:`~vidllm.data.synthetic.questions.MC_FORMAT`), ``template`` and the tags.
- ``scenes.json``: every scene's full definition; ``manifest.json``: the generation parameters.

Generated files are not committed: the command regenerates them byte for byte (scenes and
questions are seeded; x264 runs single-threaded, which makes its output deterministic).
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from vidllm.data.synthetic.questions import QuestionSet
from vidllm.data.synthetic.render import render
from vidllm.data.synthetic.scene import WorldConfig

logger = logging.getLogger(__name__)

DEFAULT_CRF = 26
"""x264 quality: about 10 KB per 5 s 96x96 video, colours at object centres within a few levels."""

GENERATOR_VERSION = 1
"""Bumped whenever a change alters generated scenes, questions or pixels (the test split changes)."""

QA_QUESTIONS = "synthetic_qa_questions.json"
QA_ANSWERS = "synthetic_qa_answers.json"
MC_FILE = "synthetic_mc.json"
SCENES_FILE = "scenes.json"
MANIFEST = "manifest.json"
VIDEO_DIR = "videos"


def encode_mp4(
    frames: np.ndarray, target: str | os.PathLike | io.BytesIO, fps: float, crf: int = DEFAULT_CRF
) -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames as H.264 / yuv420p mp4 (even H and W)."""
    import av

    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {h}x{w}")
    with av.open(target, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_rate(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # mbtree off: with it, x264 reads uninitialised padding of its half-size lookahead planes on
        # some frame widths (96 here) and the bytes, though not the decoded pixels, vary run to run.
        stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "mbtree=0"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
            )
        container.mux(stream.encode())


def decode_mp4(source: str | os.PathLike | io.BytesIO) -> tuple[np.ndarray, np.ndarray]:
    """All frames of a video (``(T, H, W, 3)`` uint8 RGB) and their presentation times in seconds.

    For files this module wrote (and tests); the library's general reader is ``vidllm.video``.
    """
    import av

    with av.open(source) as container:
        frames, times = [], []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
    return np.stack(frames), np.asarray(times)


def h264_roundtrip(frames: np.ndarray, fps: float, crf: int = DEFAULT_CRF) -> np.ndarray:
    """``frames`` as the eval harness sees them after encoding and decoding (an augmentation)."""
    buffer = io.BytesIO()
    encode_mp4(frames, buffer, fps, crf)
    buffer.seek(0)
    return decode_mp4(buffer)[0]


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def num_frames_for(fps: float, seconds: float) -> int:
    """Frames of a ``seconds``-long video at ``fps``; the product must be a whole number."""
    n = fps * seconds
    if fps <= 0 or seconds <= 0 or abs(n - round(n)) > 1e-6:
        raise ValueError(f"fps * seconds must be a positive whole number of frames, got {fps} * {seconds}")
    return round(n)


def _dump(path: Path, data) -> None:
    """A JSON list, one item per line (diffable, and a third the size of indented JSON)."""
    if isinstance(data, list):
        text = "[\n" + ",\n".join(json.dumps(item) for item in data) + "\n]\n"
    else:
        text = json.dumps(data, indent=1) + "\n"
    path.write_text(text)


def write_split(
    out_dir: str | os.PathLike,
    split: str = "test",
    *,
    num_videos: int = 334,
    questions_per_video: int = 3,
    max_questions: int | None = 1000,
    size: tuple[int, int] = (96, 96),
    fps: float = 10.0,
    seconds: float = 5.0,
    crf: int = DEFAULT_CRF,
    config: WorldConfig | None = None,
    world_seed: int = 0,
    progress: bool = False,
) -> dict:
    """Build the split's question set, write its videos and annotations, return the manifest."""
    config = replace(config or WorldConfig(), duration=float(seconds))
    num_frames = num_frames_for(fps, seconds)
    qset = QuestionSet.build(split, num_videos, questions_per_video, config, world_seed, max_questions)
    out = Path(out_dir)
    (out / VIDEO_DIR).mkdir(parents=True, exist_ok=True)

    scenes = qset.scenes
    if progress:
        from tqdm import tqdm

        scenes = tqdm(scenes, desc=f"writing {split} videos", unit="video")
    for scene in scenes:
        encode_mp4(render(scene, num_frames, size), out / VIDEO_DIR / f"{scene.video_id}.mp4", fps, crf)

    questions, answers, mc = [], [], []
    for q in qset.questions:
        subjects = [qset.scene(q.video_id).objects[i] for i in q.subjects]
        tags = {
            "template": q.template,
            "short_lived": q.short_lived,
            "small": q.small,
            "windows": q.windows_seconds(seconds),
            "subjects": [o.description for o in subjects],
        }
        questions.append({"video_name": q.video_id, "question": q.question, "question_id": q.question_id})
        answers.append(
            {
                "answer": q.answer,
                "type": q.template,
                "question_id": q.question_id,
                **tags,
                "candidates": list(q.options),
                "answer_letter": q.answer_letter,
            }
        )
        mc.append(
            {
                "video": f"{q.video_id}.mp4",
                "question": q.question,
                "candidates": list(q.options),
                "answer": q.answer,
                "question_id": q.question_id,
                "answer_letter": q.answer_letter,
                "prompt": q.mc_question,
                **tags,
            }
        )
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "world_seed": world_seed,
        "size": list(size),
        "fps": fps,
        "seconds": seconds,
        "num_frames": num_frames,
        "crf": crf,
        "video_dir": VIDEO_DIR,
        "files": {
            "qa_questions": QA_QUESTIONS,
            "qa_answers": QA_ANSWERS,
            "mc": MC_FILE,
            "scenes": SCENES_FILE,
        },
        "config": config.to_dict(),
        "summary": qset.summary(),
        "video_bytes": sum((out / VIDEO_DIR / f"{s.video_id}.mp4").stat().st_size for s in qset.scenes),
    }
    _dump(out / QA_QUESTIONS, questions)
    _dump(out / QA_ANSWERS, answers)
    _dump(out / MC_FILE, mc)
    _dump(out / SCENES_FILE, [s.to_dict() for s in qset.scenes])
    _dump(out / MANIFEST, manifest)
    logger.info(
        "wrote %d videos and %d questions to %s (%.1f MB of video)",
        len(qset.scenes),
        len(qset.questions),
        out,
        manifest["video_bytes"] / 1e6,
    )
    return manifest


def load_split(out_dir: str | os.PathLike) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """``(manifest, qa_questions, qa_answers, mc_items)`` of a written split."""
    out = Path(out_dir)
    read = lambda name: json.loads((out / name).read_text())
    return read(MANIFEST), read(QA_QUESTIONS), read(QA_ANSWERS), read(MC_FILE)


def video_path(out_dir: str | os.PathLike, video_name: str) -> Path:
    """Where a written video lives (``video_name`` with or without ``.mp4``)."""
    name = video_name if video_name.endswith(".mp4") else f"{video_name}.mp4"
    return Path(out_dir) / VIDEO_DIR / name


__all__ = [
    "DEFAULT_CRF",
    "GENERATOR_VERSION",
    "MC_FILE",
    "QA_ANSWERS",
    "QA_QUESTIONS",
    "decode_mp4",
    "encode_mp4",
    "h264_roundtrip",
    "load_split",
    "num_frames_for",
    "video_path",
    "write_split",
]
