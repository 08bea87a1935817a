"""lmms-eval interop: its CLI runs our model (entry point ``vidllm``) on a local task over the
synthetic test split, and its results file agrees with our own harness on the same replies.

lmms-eval is an optional extra of about 2.4 GB that needs the torchvision mend beside the CPU torch
(REFERENCE.md); the slow test runs where an interpreter has it: this one, or the one named by
``$VIDLLM_LMMS_PYTHON`` (a separate environment with lmms-eval and this package installed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from eval_helpers import build_tiny_videollm, write_synthetic

from eval.records import read_records
from eval.runner import VideoQAConfig, run_video_qa

REPO = Path(__file__).resolve().parent.parent


def test_entry_point_and_extra_are_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["lmms_eval.models"]["vidllm"] == "eval.lmms_eval_model:manifest"
    assert any(req.startswith("lmms-eval") for req in project["optional-dependencies"]["lmms-eval"])


def test_task_writer_uses_our_prompt_and_parser(tmp_path):
    from eval.lmms_eval_task import write_synthetic_task

    write_synthetic(tmp_path / "split", num_videos=1, max_questions=2)
    yaml_path = write_synthetic_task(tmp_path / "split", tmp_path / "task")
    text = yaml_path.read_text()
    assert "dataset_path: json" in text
    assert "process_results: !function utils.process_results" in text
    rows = [
        json.loads(line)
        for line in (tmp_path / "task" / "vidllm_synthetic_mc.jsonl").read_text().splitlines()
    ]
    mc = json.loads((tmp_path / "split" / "synthetic_mc.json").read_text())
    assert [r["prompt"] for r in rows] == [m["prompt"] for m in mc]
    # the hooks, run here as lmms-eval would call them
    spec = importlib.util.spec_from_file_location("lmms_task_utils", tmp_path / "task" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = rows[0]
    assert Path(utils.doc_to_visual(doc)[0]).is_file()
    assert utils.doc_to_text(doc) == doc["prompt"]
    assert utils.process_results(doc, [doc["answer_letter"]]) == {"accuracy": 1.0}
    assert utils.process_results(doc, ["no idea"]) == {"accuracy": 0.0}


def _lmms_python() -> str | None:
    named = os.environ.get("VIDLLM_LMMS_PYTHON")
    if named:
        return named
    return sys.executable if importlib.util.find_spec("lmms_eval") is not None else None


@pytest.mark.slow
def test_lmms_eval_runs_our_model_and_agrees_with_our_harness(tmp_path):
    python = _lmms_python()
    if python is None:
        pytest.skip(
            "lmms-eval is not installed here: pip install 'vidllm[lmms-eval]' with a constraints file "
            "pinning torch==2.13.0 and torchvision==0.28.0 (about 2.4 GB), or set VIDLLM_LMMS_PYTHON to "
            "an interpreter of an environment that has lmms-eval and this package"
        )
    from eval.lmms_eval_task import write_synthetic_task

    model_dir = build_tiny_videollm(tmp_path / "model")
    write_synthetic(tmp_path / "split", num_videos=2, max_questions=4)
    write_synthetic_task(tmp_path / "split", tmp_path / "task")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [
            python,
            "-m",
            "lmms_eval",
            "--model",
            "vidllm",
            "--model_args",
            f"pretrained={model_dir},device=cpu",
            "--tasks",
            "vidllm_synthetic_mc",
            "--include_path",
            str(tmp_path / "task"),
            "--batch_size",
            "1",
            "--output_path",
            str(tmp_path / "lmms_out"),
            "--log_samples",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=1800,
    )
    # lmms-eval exits 0 even when a task fails: its results file is what counts
    results_files = sorted((tmp_path / "lmms_out").rglob("*_results.json"))
    assert results_files, (
        f"no results file (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    results = json.loads(results_files[-1].read_text())
    lmms_accuracy = results["results"]["vidllm_synthetic_mc"]["accuracy,none"]
    samples_files = sorted((tmp_path / "lmms_out").rglob("*_samples_vidllm_synthetic_mc.jsonl"))
    assert samples_files
    lmms_samples = [json.loads(line) for line in samples_files[-1].read_text().splitlines() if line.strip()]
    assert len(lmms_samples) == 4

    ours = run_video_qa(
        VideoQAConfig(
            task="synthetic-mc",
            model=str(model_dir),
            data_root=str(tmp_path / "split"),
            output_dir=str(tmp_path / "ours"),
            progress=False,
        )
    )
    our_samples = read_records(tmp_path / "ours" / "samples.jsonl")
    rows = [
        json.loads(line)
        for line in (tmp_path / "task" / "vidllm_synthetic_mc.jsonl").read_text().splitlines()
    ]
    replies = {}
    for sample in lmms_samples:  # lmms-eval logs doc_id (the row) and the filtered reply
        reply = sample["filtered_resps"]
        replies[rows[sample["doc_id"]]["question_id"]] = reply[0] if isinstance(reply, list) else reply
    assert replies == {s["id"]: s["prediction"] for s in our_samples}  # the same model, prompt and reducer
    assert lmms_accuracy == pytest.approx(ours["metrics"]["accuracy"]["value"])


_LOGLIKELIHOOD_CHECK = """
import json, sys
from types import SimpleNamespace
from eval.lmms_eval_model import VidLLM, manifest

assert manifest().simple_class_path == "eval.lmms_eval_model.VidLLM"
model_dir, video = sys.argv[1], sys.argv[2]
lm = VidLLM(pretrained=model_dir, device="cpu", reducer="uniform", budget=32)
lm.task_dict = {"t": {"test": {0: {"video": video}}}}
visual = lambda doc: [doc["video"]]
context = "What colour is the circle?"
(reply,) = lm.generate_until([SimpleNamespace(args=(context, {"max_new_tokens": 2}, visual, 0, "t", "test"))])
request = lambda cont: SimpleNamespace(args=(context, cont, visual, 0, "t", "test"))
first = reply.split()[0]
other_word = "purple" if first != "purple" else "orange"
(_, greedy), (first_lp, _), (other_lp, other) = lm.loglikelihood(
    [request(reply), request(first), request(other_word)]
)
print(json.dumps({"reply": reply, "greedy": greedy, "first_lp": first_lp, "other": other, "other_lp": other_lp}))
"""


@pytest.mark.slow
def test_lmms_model_loglikelihood_agrees_with_its_generation(tmp_path):
    """The reply ``generate_until`` gives is, token by token, what ``loglikelihood`` calls greedy."""
    python = _lmms_python()
    if python is None:
        pytest.skip("lmms-eval is not installed here (see the test above for how to install it)")
    from vidllm.testing.media import write_clip

    model_dir = build_tiny_videollm(tmp_path / "model")
    video = write_clip(tmp_path / "clip.mp4", num_frames=20)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [python, "-c", _LOGLIKELIHOOD_CHECK, str(model_dir), str(video)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["reply"]
    assert out["greedy"] is True
    assert out["other"] is False
    assert out["other_lp"] < out["first_lp"] <= 0.0  # the greedy first word is the most likely one
