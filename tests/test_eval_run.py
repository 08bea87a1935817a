"""The video-QA harness end to end on a tiny random VideoLLM: outputs, failures in the denominator,
SIGKILL and resume, the judge against a real local HTTP server, sweeps, and the command lines."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from eval_helpers import LAYOUT_WRITERS, build_tiny_videollm, write_json, write_synthetic

from eval.records import read_records
from eval.runner import IncompleteRunError, RunMismatchError, VideoQAConfig, merge, run_video_qa
from eval.tasks import get_task
from vidllm.testing.processes import free_port, run_process_group

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_videollm(tmp_path_factory.mktemp("tiny_videollm"))


@pytest.fixture(scope="module")
def model(model_dir):
    import vidllm

    return vidllm.load(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root, num_videos=3, max_questions=6)
    return root


def config_for(model_dir, data_root, out, **kwargs) -> VideoQAConfig:
    return VideoQAConfig(
        task=kwargs.pop("task", "synthetic-mc"),
        model=str(model_dir),
        data_root=str(data_root),
        output_dir=str(out),
        progress=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def reference(model_dir, model, synthetic_root, tmp_path_factory):
    """One uninterrupted run of synthetic-mc: (config, results, samples)."""
    config = config_for(model_dir, synthetic_root, tmp_path_factory.mktemp("reference"))
    results = run_video_qa(config, model=model)
    samples = read_records(Path(config.output_dir) / "samples.jsonl")
    return config, results, samples


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eval", *args], capture_output=True, text=True, cwd=REPO, **kwargs
    )


def strip_timing(results: dict) -> dict:
    return {
        k: results[k]
        for k in ("n_samples", "n_errors", "errors_by_type", "metrics", "groups", "mean_visual_tokens")
    }


# ----------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------


def test_results_and_samples(reference, synthetic_root):
    config, results, samples = reference
    docs = get_task("synthetic-mc").load_docs(synthetic_root)
    assert [s["id"] for s in samples] == [d.id for d in docs]
    assert results["task"] == "synthetic-mc"
    assert results["model"]["path"] == str(Path(config.model).resolve())
    assert results["reducer"]["name"] == "free-video-llm"
    assert results["reducer"]["config"]["num_frames"] == 8
    assert results["n_samples"] == len(docs)
    assert results["n_errors"] == 0
    accuracy = results["metrics"]["accuracy"]
    assert accuracy["correct"] == sum(s["correct"] for s in samples)
    assert accuracy["value"] == accuracy["correct"] / len(docs)
    assert accuracy["ci_low"] <= accuracy["value"] <= accuracy["ci_high"]
    assert results["mean_visual_tokens"] == 64.0  # 2 slow + 2 middle frames of 8 tokens, 8 fast of 4
    assert results["mean_uniform_tokens"] == 8 * 16
    assert set(results["latency_s"]) >= {"p50", "p90", "p99"}
    assert results["latency_s"]["p50"] <= results["latency_s"]["p99"]
    assert results["versions"]["torch"]
    assert results["versions"]["transformers"]
    assert results["git"] is None or len(results["git"]["commit"]) == 40
    assert set(results["groups"]) == {"template", "short_lived", "small"}
    for sample in samples:
        assert sample["error"] is None
        assert sample["visual_tokens"] == 64
        assert sample["uniform_tokens"] == 128
        assert set(sample["kept_frames"]) == {"slow", "middle", "fast"}
        assert len(sample["kept_frames"]["fast"]) == 8
        assert sample["latency_s"] > 0
        assert sample["prompt"].startswith(sample["question"])
        assert "(A)" in sample["prompt"]
        assert sample["correct"] == (sample["parsed"] == sample["answer_letter"])


def test_finished_run_restarts_to_the_same_result_and_refuses_other_settings(reference):
    config, results, _ = reference
    again = run_video_qa(config)  # nothing left to answer: no model is loaded, the merge is redone
    assert strip_timing(again) == strip_timing(results)
    changes = [
        ({"budget": 32}, "budget"),
        ({"reducer": "uniform"}, "reducer"),
        ({"limit": 2}, "num_docs: 6 -> 2"),
    ]
    changes.append(({"task": "synthetic-qa"}, "task"))
    for change, message in changes:
        other = VideoQAConfig(**{**config.__dict__, **change})
        with pytest.raises(RunMismatchError, match=message):
            run_video_qa(other)


def test_batched_generation_gives_the_same_answers(reference, model, tmp_path):
    config, results, samples = reference
    batched = VideoQAConfig(**{**config.__dict__, "output_dir": str(tmp_path / "batched"), "batch_size": 4})
    again = run_video_qa(batched, model=model)
    assert [s["prediction"] for s in read_records(tmp_path / "batched" / "samples.jsonl")] == [
        s["prediction"] for s in samples
    ]
    assert strip_timing(again) == strip_timing(results)


def test_every_failure_is_in_the_denominator(model_dir, model, tmp_path):
    """A missing video, an unreadable one, an empty question and an item without an answer are
    each recorded with their reason and scored wrong; the good item is answered."""
    from vidllm.testing.media import write_random_bytes

    root = tmp_path / "data"
    LAYOUT_WRITERS["msvd-qa"](root)  # q0-q2 readable, q3's video missing
    base = root / "MSVD_Zero_Shot_QA"
    write_random_bytes(base / "videos" / "vid_bad.mp4", 4096)
    questions = json.loads((base / "test_q.json").read_text())
    answers = json.loads((base / "test_a.json").read_text())
    questions[1]["question"] = "   "
    questions.append({"video_name": "vid_bad", "question": "what is this", "question_id": "q4"})
    answers.append({"answer": "noise", "type": 8, "question_id": "q4"})
    questions.append({"video_name": "vid_one", "question": "who knows", "question_id": "q5"})  # no answer
    write_json(base / "test_q.json", questions)
    write_json(base / "test_a.json", answers)

    config = config_for(model_dir, root, tmp_path / "out", task="msvd-qa")
    results = run_video_qa(config, model=model)
    samples = {s["id"]: s for s in read_records(tmp_path / "out" / "samples.jsonl")}
    assert results["n_samples"] == 6
    assert results["n_errors"] == 4
    assert samples["q0"]["error"] is None
    assert samples["q2"]["error"] is None
    assert samples["q1"]["error"].startswith("InvalidQuestion: the question is empty")
    assert samples["q3"]["error"].startswith("VideoNotFoundError")
    assert samples["q4"]["error"].split(":")[0] in {
        "CorruptVideoError",
        "UnsupportedVideoError",
        "NoVideoStreamError",
    }
    assert samples["q5"]["error"].startswith("InvalidItem: no answer")
    assert results["errors_by_type"]["InvalidQuestion"] == 1
    assert results["errors_by_type"]["InvalidItem"] == 1
    for metric in ("normalized_match", "exact_match"):
        assert results["metrics"][metric]["n"] == 6
        assert all(not samples[q]["scores"][metric] for q in ("q1", "q3", "q4", "q5"))
    assert results["metrics"]["judge"]["value"] is None  # listed by the task, not run without a judge


# ----------------------------------------------------------------------------------------------
# SIGKILL at a random sample, then resume
# ----------------------------------------------------------------------------------------------


def test_sigkill_at_a_random_sample_then_resume(reference, tmp_path):
    config, results, samples = reference
    out = tmp_path / "killed"
    args = [
        "video-qa", "--model", config.model, "--task", config.task, "--data-root", config.data_root,
        "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    n = len(samples)
    # in the first half: samples of the tiny model take milliseconds, and a kill aimed at the
    # last one can land after the run has written every record (seen: "assert 6 < 6")
    kill_after = random.Random(os.getpid()).randint(1, max(1, n // 2))
    shard = out / "shards" / "rank0.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "eval", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if shard.exists() and shard.read_bytes().count(b"\n") >= kill_after:
                break
            time.sleep(0.001)
        assert process.poll() is None, f"the run ended before the kill: {process.communicate()}"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    done = len(read_records(shard))
    assert kill_after <= done < n
    assert not (out / "results.json").exists()
    # a merge now reports the missing samples instead of a partial result
    with pytest.raises(IncompleteRunError, match=f"{n - done} of {n}"):
        merge(out, get_task(config.task), get_task(config.task).load_docs(config.data_root), config, {})
    with open(shard, "ab") as f:  # and the write the kill interrupted left half a line
        f.write(b'{"id": "synthetic_test_00002_q1", "prediction": "B", "err')

    finished = cli(*args, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    resumed = read_records(out / "samples.jsonl")
    assert [s["id"] for s in resumed] == [s["id"] for s in samples]  # every sample exactly once
    assert len(read_records(shard)) == n
    assert [s["prediction"] for s in resumed] == [s["prediction"] for s in samples]
    final = json.loads((out / "results.json").read_text())
    assert strip_timing(final) == strip_timing(results)
    assert final["repeated_records_ignored"] == 0
    assert "accuracy" in finished.stdout  # the summary table


# ----------------------------------------------------------------------------------------------
# the judge, against a real HTTP server on 127.0.0.1
# ----------------------------------------------------------------------------------------------

#: question -> the judge's replies in order (an int is an HTTP error status)
JUDGE_SCRIPT = {
    "what colour is the square": ["{'pred': 'yes', 'score': 5}"],
    "how many circles are there": ["I think it matches.", "{'pred': 'no', 'score': 1}"],
    "is it moving": [500, "{'pred': 'perhaps', 'score': 2}", "{'pred': 'yes', 'score': 9}"],
}


class JudgeStub(BaseHTTPRequestHandler):
    script: dict
    requests: list

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body})
        question = re.search(r"Question: (.*)\n", body["messages"][-1]["content"]).group(1)
        reply = type(self).script[question].pop(0)
        if isinstance(reply, int):
            self.send_response(reply)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        data = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    handler = type(
        "Handler", (JudgeStub,), {"script": {k: list(v) for k, v in JUDGE_SCRIPT.items()}, "requests": []}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_judge_protocol_against_a_local_server(model_dir, model, tmp_path, judge_server):
    url, handler = judge_server
    LAYOUT_WRITERS["msvd-qa"](tmp_path / "data")  # q0-q2 answerable, q3's video missing
    config = config_for(
        model_dir, tmp_path / "data", tmp_path / "out", task="msvd-qa", judge_url=url, judge_model="judge-x"
    )
    results = run_video_qa(config, model=model)
    samples = {s["id"]: s for s in read_records(tmp_path / "out" / "samples.jsonl")}

    assert samples["q0"]["judge"]["pred"] == "yes"
    assert samples["q0"]["judge"]["attempts"] == 1
    assert samples["q1"]["judge"]["pred"] == "no"
    assert samples["q1"]["judge"]["attempts"] == 2
    failed = samples["q2"]["judge"]
    assert failed["pred"] is None
    assert failed["attempts"] == 3
    assert "outside 0-5" in failed["error"]
    assert "judge" not in samples["q3"]
    assert samples["q3"]["error"].startswith("VideoNotFoundError")

    judge = results["metrics"]["judge"]
    assert (judge["correct"], judge["n"], judge["judge_failures"], judge["yes"], judge["no"]) == (
        1,
        4,
        1,
        1,
        1,
    )
    assert judge["value"] == 0.25
    assert judge["accuracy_of_judged"] == 0.5
    assert results["metrics"]["judge_score"]["value"] == pytest.approx((5 + 1 + 0 + 0) / 4)

    assert len(handler.requests) == 6
    assert all(v == [] for v in handler.script.values())
    for request in handler.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["body"]["model"] == "judge-x"
        assert request["body"]["temperature"] == 0
    first = handler.requests[0]["body"]["messages"][-1]["content"]
    assert "Correct answer: red" in first
    assert f"Predicted answer: {samples['q0']['prediction']}" in first


def test_judge_needs_a_model_name():
    with pytest.raises(ValueError, match="judge-model"):
        VideoQAConfig(task="msvd-qa", output_dir="x", judge_url="http://127.0.0.1:1/v1")


# ----------------------------------------------------------------------------------------------
# sweeps
# ----------------------------------------------------------------------------------------------


def test_budget_sweep_writes_table_and_plot(model_dir, model, synthetic_root, tmp_path, monkeypatch):
    import eval.sweep as sweep

    monkeypatch.setattr(sweep, "load_model", lambda config, device=None: model)
    config = config_for(model_dir, synthetic_root, tmp_path / "sweep", limit=2)
    rows = sweep.run_sweep(config, sweep.parse_budgets("32,2"))
    by_key = {(r["reducer"], r["budget"]): r for r in rows}
    assert set(by_key) == {("free-video-llm", 2), ("uniform", 2), ("free-video-llm", 32), ("uniform", 32)}
    # one 4x4 frame, pooled down to 4x1, is 4 tokens; Free Video-LLM fits 2 with one 1x1 fast frame
    assert by_key[("uniform", 2)]["status"].startswith("infeasible")
    for key in [("free-video-llm", 2), ("free-video-llm", 32), ("uniform", 32)]:
        row = by_key[key]
        assert row["status"] == "ok"
        assert row["n"] == 2
        assert row["mean_visual_tokens"] <= key[1]
    assert by_key[("uniform", 32)]["mean_visual_tokens"] == 32  # two full frames
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| uniform | 2 | infeasible" in table
    assert "ratio (free-video-llm / uniform)" in table
    csv_lines = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert csv_lines[0].startswith("reducer,budget,status,accuracy")
    assert len(csv_lines) == 5
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "sweep" / "uniform_b32" / "results.json").exists()
    with pytest.raises(ValueError, match="positive"):
        sweep.parse_budgets("0,64")


def test_synthetic_report_figures_come_from_the_runs(model_dir, model, synthetic_root, tmp_path, monkeypatch):
    import eval.synthetic_report as report_module

    monkeypatch.setattr(report_module, "load_model", lambda config, device=None: model)
    out = tmp_path / "report"
    report = report_module.run_report(str(model_dir), synthetic_root, out, 6, 4, [32])
    samples = {k: read_records(out / k / "samples.jsonl") for k in ("free-video-llm", "uniform", "full")}
    assert all(len(v) == 6 for v in samples.values())
    correct = [r["correct"] for r in samples["free-video-llm"]]
    assert report["accuracy"]["value"] == sum(correct) / len(correct)
    hard = [r for r in samples["free-video-llm"] if r["group"]["short_lived"] or r["group"]["small"]]
    assert report["short_lived_or_small"]["free-video-llm"]["n"] == len(hard)
    tokens = report["visual_tokens"]
    assert report["token_share"] == tokens["free-video-llm"] / tokens["full"]
    assert tokens["uniform"] <= tokens["free-video-llm"] < tokens["full"]  # uniform: the same budget
    assert set(report["per_template"]) == {r["group"]["template"] for r in samples["free-video-llm"]}
    text = (out / "report.md").read_text()
    assert "short-lived or small" in text
    assert "| template | accuracy |" in text
    rows = (out / "sweep" / "sweep.csv").read_text().splitlines()[1:]
    assert len(rows) == 5  # the default, uniform at its budget, full tokens, both reducers at 32
    assert all(",ok," in row and ",4," in row for row in rows)  # every point on the first 4 questions
    assert (out / "sweep" / "sweep.png").exists()


# ----------------------------------------------------------------------------------------------
# command lines
# ----------------------------------------------------------------------------------------------


def test_vidllm_eval_is_the_same_command(capsys):
    from vidllm.cli import main

    assert main(["eval", "tasks"]) == 0
    listed = capsys.readouterr().out
    for name in (
        "msvd-qa",
        "msrvtt-qa",
        "tgif-qa",
        "activitynet-qa",
        "mvbench",
        "videomme",
        "synthetic-qa",
        "synthetic-mc",
    ):
        assert name in listed


def test_cli_reports_bad_requests(tmp_path, capsys):
    from eval.cli import main

    assert main(["video-qa", "--task", "no-such-task", "--output-dir", str(tmp_path)]) == 2
    assert "unknown task 'no-such-task'" in capsys.readouterr().err
    assert (
        main(
            [
                "video-qa",
                "--task",
                "msvd-qa",
                "--data-root",
                str(tmp_path / "none"),
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "is not a directory" in capsys.readouterr().err
    report = [
        "synthetic-report",
        "--output-dir",
        str(tmp_path / "report"),
        "--data-root",
        str(tmp_path / "split"),
    ]
    assert main([*report, "--budgets", "0,64"]) == 2
    assert "positive token counts" in capsys.readouterr().err
    assert main([*report, "--model", str(tmp_path / "no-model")]) == 2
    assert "no model" in capsys.readouterr().err
    assert not (tmp_path / "split").exists()  # nothing written for a model that does not load


def test_two_accelerate_processes_give_the_single_process_metrics(reference, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2 -m eval`` (two CPU processes in a gloo group
    here: accelerate's ``--cpu`` starts a single process): two shard files, one merged result."""
    config, results, samples = reference
    out = tmp_path / "two"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
        "--dynamo_backend", "no", "-m", "eval",
        "video-qa", "--model", config.model, "--task", config.task, "--data-root", config.data_root,
        "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    done = run_process_group(command, cwd=REPO, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert shards == ["rank0.jsonl", "rank1.jsonl"]
    ranks = {p: {r["id"] for r in read_records(out / "shards" / p)} for p in shards}
    assert ranks["rank0.jsonl"]
    assert ranks["rank1.jsonl"]
    assert not ranks["rank0.jsonl"] & ranks["rank1.jsonl"]
    merged = read_records(out / "samples.jsonl")
    assert [s["id"] for s in merged] == [s["id"] for s in samples]
    assert [s["prediction"] for s in merged] == [s["prediction"] for s in samples]
    final = json.loads((out / "results.json").read_text())
    assert final["processes"] == 2
    assert strip_timing(final) == strip_timing(results)
