"""A tiny, randomly initialised VideoLLM saved to disk, and benchmark-layout fixtures, for the eval tests.

The bundled default model is trained in a later issue; the harness is tested on the project's tiny
model (:mod:`vidllm.testing.tiny`: a 1-block ViT tower with a 4x4 patch grid, a tiny open_clip
scorer, a 2-layer Llama over a word-level vocabulary), saved and reloaded through
``VideoLLM.save_pretrained`` / ``vidllm.load`` exactly as a real checkpoint is.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ANSWER_WORDS = [
    "red",
    "green",
    "blue",
    "yellow",
    "circle",
    "square",
    "triangle",
    "star",
    "left",
    "right",
    "up",
    "down",
    "A",
    "B",
    "C",
    "D",
    "0",
    "1",
    "2",
    "3",
]


def build_tiny_videollm(directory: str | Path, *, seed: int = 0, num_frames: int = 8) -> Path:
    """Save :func:`vidllm.testing.tiny.tiny_video_llm` to ``directory``, its LM nudged towards answer
    words (so a random model's replies are sometimes right, and accuracies are not all zero)."""
    from vidllm.testing.tiny import tiny_video_llm

    model = tiny_video_llm(seed=seed, num_frames=num_frames)
    model.config.decode_max_side = 64
    with torch.no_grad():
        ids = model.tokenizer.convert_tokens_to_ids(ANSWER_WORDS)
        model.lm.get_output_embeddings().weight[ids] *= 6.0
    model.save_pretrained(directory)
    return Path(directory)


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


# ----------------------------------------------------------------------------------------------
# small fixtures in each benchmark's official annotation layout
# ----------------------------------------------------------------------------------------------


def _clip(path: Path, num_frames: int = 20) -> Path:
    from vidllm.testing.media import write_clip

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_clip(path, num_frames=num_frames, fps=10, width=64, height=48)


def _frame_folder(path: Path, num_frames: int = 12) -> Path:
    """A folder of PNG frames (MVBench's TVQA items), frame ``i`` colour-coded as in the clips."""
    from PIL import Image

    from vidllm.testing.media import make_frame

    path.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        Image.fromarray(make_frame(i, 64, 48)).save(path / f"{i + 1:05d}.png")
    return path


def write_video_chatgpt(root: Path, folder: str, video_dir: str, prefix: str = "") -> dict:
    """Three questions over two videos (one ``.mp4``, one ``.mkv``) and one whose video is missing."""
    base = root / folder
    _clip(base / video_dir / f"{prefix}vid_one.mp4")
    _clip(base / video_dir / f"{prefix}vid_two.mkv")
    questions = [
        {"video_name": "vid_one", "question": "what colour is the square", "question_id": "q0"},
        {"video_name": "vid_two", "question": "how many circles are there", "question_id": "q1"},
        {"video_name": "vid_one", "question": "is it moving", "question_id": "q2"},
        {"video_name": "vid_gone", "question": "what is missing", "question_id": "q3"},
    ]
    answers = [
        {"answer": "red", "type": 4, "question_id": "q0"},
        {"answer": "three", "type": 7, "question_id": "q1"},
        {"answer": "yes", "type": 3, "question_id": "q2"},
        {"answer": "nothing", "type": 8, "question_id": "q3"},
    ]
    write_json(base / "test_q.json", questions)
    write_json(base / "test_a.json", answers)
    return {
        "ids": ["q0", "q1", "q2", "q3"],
        "videos": {
            "q0": base / video_dir / f"{prefix}vid_one.mp4",
            "q1": base / video_dir / f"{prefix}vid_two.mkv",
            "q3": base / video_dir / f"{prefix}vid_gone.mp4",  # the first candidate, which does not exist
        },
        "answers": {"q0": "red", "q1": "three"},
        "missing": ["q3"],
    }


def write_mvbench(root: Path) -> dict:
    """One item per sub-task in the task file's layout (``json/<task>.json``, videos under each
    prefix); bound sub-tasks get a ``start``/``end`` window, the frame sub-task a PNG folder."""
    from eval.tasks import get_task

    tasks = get_task("mvbench").dataset_kwargs["tasks"]
    expected = {}
    for name, spec in tasks.items():
        prefix = root / "video" / spec.get("prefix", "")
        if spec.get("data_type") == "frame":
            _frame_folder(prefix / f"{name}_clip")
            video = f"{name}_clip"
        else:
            _clip(prefix / f"{name}_clip.mp4")
            video = f"{name}_clip.mp4"
        item = {
            "video": video,
            "question": f"What happens in {name.replace('_', ' ')}?",
            "candidates": ["nothing", "a square moves", "a circle spins"],
            "answer": "a square moves",
        }
        if spec.get("bound"):
            item.update(start=0.5, end=1.5)
        write_json(root / "json" / spec["json"], [item])
        expected[f"{name}/0"] = {"bound": bool(spec.get("bound")), "frames": spec.get("data_type") == "frame"}
    return expected


def write_videomme(root: Path) -> dict:
    """Video-MME rows (letter answers, "A. ..." options) as the JSON export the task falls back to."""
    _clip(root / "data" / "abc123.mp4")
    rows = [
        {
            "videoID": "abc123",
            "question_id": "001-1",
            "duration": "short",
            "domain": "Knowledge",
            "sub_category": "Humanity & History",
            "task_type": "Counting Problem",
            "question": "How many squares appear?",
            "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."],
            "answer": "C",
        },
        {
            "videoID": "abc123",
            "question_id": "001-2",
            "duration": "short",
            "domain": "Knowledge",
            "sub_category": "Humanity & History",
            "task_type": "Object Recognition",
            "question": "What colour is the background?",
            "options": ["A. Red.", "B. Green.", "C. Blue.", "D. Grey."],
            "answer": "E",  # not an option letter: kept, marked, scored wrong
        },
    ]
    write_json(root / "videomme" / "test.json", rows)
    return {"ids": ["001-1", "001-2"]}


def write_synthetic(root: Path, num_videos: int = 2, max_questions: int = 4) -> dict:
    """The synthetic world's own writer (tiny: 32x32, 1 s at 10 fps)."""
    from vidllm.data.synthetic import write_split

    manifest = write_split(
        root, "test", num_videos=num_videos, max_questions=max_questions, size=(32, 32), fps=10.0, seconds=1.0
    )
    return {"questions": manifest["summary"]["questions"]}


LAYOUT_WRITERS = {
    "msvd-qa": lambda root: write_video_chatgpt(root, "MSVD_Zero_Shot_QA", "videos"),
    "msrvtt-qa": lambda root: write_video_chatgpt(root, "MSRVTT_Zero_Shot_QA", "videos/all"),
    "tgif-qa": lambda root: write_video_chatgpt(root, "TGIF_Zero_Shot_QA", "mp4"),
    "activitynet-qa": lambda root: write_video_chatgpt(root, "Activitynet_Zero_Shot_QA", "all_test", "v_"),
    "mvbench": write_mvbench,
    "videomme": write_videomme,
    "synthetic-qa": write_synthetic,
    "synthetic-mc": write_synthetic,
}
