"""The default preset's video-stage training step, side by side: precisions, and this tree against
another revision of the code.

``vidllm train --preset default`` autocasts to bfloat16 (``Preset.bf16``). Whether that is faster
than float32 depends on the CPU (one with AMX runs bfloat16 matmuls fast, and its bfloat16
attention backward slowly), so the recorded training time moves with the machine. Variants:

- ``fp32``: no autocast;
- ``bf16``: the preset's autocast;
- ``bf16+fp32-attention``: autocast, with the LM's attention computed in float32
  (``Preset.fp32_attention``, ``vidllm.lm.training.float32_attention``);
- with ``--against REV``, also ``bf16`` on the code of git revision ``REV`` (checked out in a
  temporary worktree): what a change to the code saved, on the same batches and weights;
- with ``--set KEY=VALUE``, also ``fp32`` (the default preset's precision) with that preset field
  overridden: what a part of the recipe costs (``--set objects.interleave=0``: the video stage
  without its made-up object sequences; ``--set video.ema_decay=0.998``: with the moving average of
  the weights, whose update is counted in the optimiser step).

Each variant runs in its own worker process, and the workers take turns: each round runs one step
of every variant on the same batch (the preset's own batches, steps ``--first-step`` on), from
the same initial weights, one process at a time. The median per variant is printed with its
ratio to this tree's ``bf16`` (to the first precision timed, when ``bf16`` is not), and the split
into forward, backward and optimiser step. The model is the default preset's architecture with
its initial weights (the shipped tokenizer, no training before): the cost of a step does not
depend on the weights.

Run: ``python benchmarks/train_step.py [--rounds R] [--threads N] [--against REV]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = {  # name: (autocast, attention in float32)
    "fp32": (False, False),
    "bf16": (True, False),
    "bf16+fp32-attention": (True, True),
}


def build_stage(name: str, fp32_attention: bool, overrides: dict | None = None):
    """Stage ``name`` of the default preset (with ``overrides``), its model at its initialisation
    (the shipped tokenizer)."""
    import torch
    from transformers import AutoTokenizer

    from vidllm.api import resolve_model_path
    from vidllm.train.presets import get_preset
    from vidllm.train.scorer_training import build_dual_encoder, scorer_stage
    from vidllm.train.trainer import VideoLLMForTraining, build_video_llm, video_stage

    preset = get_preset("default", overrides or None)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("default") / "lm")
    torch.manual_seed(preset.seed)
    dual = build_dual_encoder(preset, tokenizer)
    if name == "scorer":
        if fp32_attention:
            raise SystemExit("fp32 attention is the LM's: the scorer stage has no LM")
        return scorer_stage(preset, tokenizer, dual)
    model = build_video_llm(preset, tokenizer, dual)
    if fp32_attention:
        from vidllm.lm.training import register_float32_attention

        model.lm.config._attn_implementation = register_float32_attention()
    # a revision before the made-up object sequences (--against) has no ``preset.objects``
    objects = (preset.objects,) if hasattr(preset, "objects") else ()
    return video_stage(preset, VideoLLMForTraining.from_spec(model, preset.video, *objects))


def worker(stage_name: str, precision: str, threads: int | None, overrides: dict) -> None:
    """Run the steps named on stdin as ``vidllm.train.loop.run_stage`` does, one JSON line each."""
    import torch

    import vidllm

    if threads:
        torch.set_num_threads(threads)
    autocast, fp32_attention = PRECISIONS[precision]
    stage = build_stage(stage_name, fp32_attention, overrides)
    module = stage.module.train()
    optimizer = torch.optim.AdamW(stage.param_groups)
    trainable = [p for g in stage.param_groups for p in g["params"] if p.requires_grad]
    average = None
    if getattr(stage, "ema_decay", 0) > 0:  # a revision before the moving average has no ema_decay
        from vidllm.train.loop import WeightAverage

        average = WeightAverage.of(module, trainable, stage.ema_decay)
    print(json.dumps({"vidllm": vidllm.__file__}), flush=True)
    for line in sys.stdin:
        step = int(line)
        t0 = time.perf_counter()
        if stage.on_step is not None:
            stage.on_step(module, step)
        batch = stage.batch_fn(step, 0, 1)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            loss, _ = stage.loss_fn(module, batch, step)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        if stage.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, stage.grad_clip)
        optimizer.step()
        if average is not None:
            average.update(step + 1)
        t4 = time.perf_counter()
        times = {"batch": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "optimiser": t4 - t3}
        print(json.dumps({**times, "loss": float(loss.detach())}), flush=True)


class Worker:
    def __init__(
        self, stage: str, precision: str, tree: Path, threads: int | None, overrides: dict | None = None
    ):
        env = {**os.environ, "PYTHONPATH": str(tree)}
        command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--worker", precision]
        if overrides:
            command += ["--worker-overrides", json.dumps(overrides)]
        if threads:
            command += ["--threads", str(threads)]
        self.process = subprocess.Popen(command, cwd=tree, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)  # fmt: skip
        imported = Path(self._read()["vidllm"]).resolve()
        if not imported.is_relative_to(tree.resolve()):
            raise RuntimeError(f"the worker for {tree} imported vidllm from {imported}")

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a benchmark worker exited (code {self.process.wait()})")
        return json.loads(line)

    def step(self, step: int) -> dict:
        self.process.stdin.write(f"{step}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", choices=["video", "scorer"], default="video")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="rounds run first and not counted")
    parser.add_argument("--first-step", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--precisions", default=",".join(PRECISIONS), help="comma-separated, of: " + ", ".join(PRECISIONS)
    )
    parser.add_argument("--against", metavar="REV", help="also time bf16 on the code of this git revision")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="also time fp32 with this preset field overridden (repeatable: "
                        "one more variant each), e.g. objects.interleave=0")  # fmt: skip
    parser.add_argument("--worker", choices=list(PRECISIONS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.stage, args.worker, args.threads, json.loads(args.worker_overrides))
        return

    from vidllm._system import cpu_info
    from vidllm.commands.train import parse_override

    with contextlib.ExitStack() as stack:
        variants = {name: (REPO, name, None) for name in args.precisions.split(",")}
        for key, value in map(parse_override, args.overrides):
            variants[f"fp32, {key}={json.dumps(value)}"] = (REPO, "fp32", {key: value})
        if args.against:
            tree = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "tree"
            git = ["git", "-C", str(REPO), "worktree"]
            subprocess.run(
                [*git, "add", "--detach", str(tree), args.against], check=True, capture_output=True
            )
            stack.callback(subprocess.run, [*git, "remove", "--force", str(tree)], check=True)
            variants[f"{args.against}: bf16"] = (tree, "bf16", None)
        workers = {}
        for name, (tree, precision, overrides) in variants.items():
            workers[name] = Worker(args.stage, precision, tree, args.threads, overrides)
            stack.callback(workers[name].close)
        times: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for r in range(args.warmup + args.rounds):
            for name, w in workers.items():
                out = w.step(args.first_step + r)
                if r >= args.warmup:
                    times[name].append(out)

    cpu = cpu_info()
    threads = args.threads or "torch's default"
    print(f"{args.stage} stage of the default preset, steps {args.first_step + args.warmup} to "
          f"{args.first_step + args.warmup + args.rounds - 1}; CPU: {cpu['model']} (torch ISA {cpu['isa']}; "
          f"flags {' '.join(cpu['flags']) or '-'}), {threads} threads; median per step")  # fmt: skip
    parts = ("batch", "forward", "backward", "optimiser")
    # the ratio's base: this tree's bf16, or the first precision timed when bf16 is not
    base_name = "bf16" if "bf16" in times else next(iter(times))
    print(f"| variant | step (s) | {' | '.join(parts)} | step / {base_name} step | loss, last round |")
    print("|---|---|" + "---|" * len(parts) + "---|---|")
    step_time = lambda rows: statistics.median(sum(t[k] for k in parts) for t in rows)
    base = step_time(times[base_name])
    for name, rows in times.items():
        medians = " | ".join(f"{statistics.median(t[k] for t in rows):.3f}" for k in parts)
        print(
            f"| {name} | {step_time(rows):.3f} | {medians} | {step_time(rows) / base:.2f} | {rows[-1]['loss']:.4f} |"
        )


if __name__ == "__main__":
    main()
