"""A local lmms-eval task over the synthetic world's written test split (no lmms-eval import needed).

lmms-eval reads local tasks from ``--include_path DIR``: a YAML file with ``dataset_path: json``
and ``dataset_kwargs.data_files``, and ``!function utils.name`` hooks in a ``utils.py`` beside it
(REFERENCE.md, "lmms-eval"). :func:`write_synthetic_task` writes both for a split written by
``python -m vidllm.data.synthetic write``; its prompt is the one our ``synthetic-mc`` task asks and
its answers are parsed by :func:`eval.metrics.parse_choice`, so lmms-eval running our model
(``--model vidllm``) and our own harness score the same replies the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# ----------------------------------------------------------------------------------------------

_UTILS = '''"""Hooks of the local lmms-eval task over a written synthetic split (made by eval.lmms_eval_model)."""

from eval.metrics import parse_choice

VIDEO_DIR = {video_dir!r}


def doc_to_visual(doc):
    return [VIDEO_DIR + "/" + doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["prompt"]


def process_results(doc, results):
    choice = parse_choice(results[0], doc["candidates"])
    return {{"accuracy": float(choice == doc["answer_letter"])}}
'''


def write_synthetic_task(
    split_dir: str | os.PathLike, task_dir: str | os.PathLike, task: str = "vidllm_synthetic_mc"
) -> Path:
    """Write ``<task_dir>/<task>.yaml`` and ``utils.py`` for lmms-eval's ``--include_path``."""
    split_dir = Path(split_dir).resolve()
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    mc = json.loads((split_dir / "synthetic_mc.json").read_text())
    # one JSON-lines file with only the fields the hooks read (nested lists trip the JSON builder's schema)
    rows = [
        {
            k: item[k]
            for k in ("video", "question", "candidates", "answer", "answer_letter", "prompt", "question_id")
        }
        for item in mc
    ]
    data = task_dir / f"{task}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task_dir / "utils.py").write_text(_UTILS.format(video_dir=str(split_dir / "videos")))
    (task_dir / f"{task}.yaml").write_text(
        f"task: {task}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {data.resolve()}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        "doc_to_visual: !function utils.doc_to_visual\n"
        "doc_to_text: !function utils.doc_to_text\n"
        "doc_to_target: answer_letter\n"
        "generation_kwargs:\n"
        "  max_new_tokens: 4\n"
        "  until: []\n"
        "process_results: !function utils.process_results\n"
        "metric_list:\n"
        "  - metric: accuracy\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    return task_dir / f"{task}.yaml"
