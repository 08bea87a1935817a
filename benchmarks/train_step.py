"""The default preset's video-stage training step under three precisions, side by side.

``vidllm train --preset default`` autocasts to bfloat16 (``Preset.bf16``). Whether that is faster
than float32 depends on the CPU: this machine's bfloat16 matmuls run on AMX, but its
bfloat16 attention backward (``scaled_dot_product_attention`` on CPU) is slower than float32's
and the casts cost their share, so the recorded training time (and whether it stays under the
issue's 90 minutes) moves with the machine. Three variants of the same steps:

- ``fp32``: no autocast;
- ``bf16``: the preset's autocast;
- ``bf16, fp32 attention``: autocast, with the attention itself computed in float32 (a
  registered ``transformers`` attention function; inputs cast up, the output cast back).

Each round runs one step of every variant on the same batch (the preset's own batches, steps
``--first-step`` on), from the same initial weights, in turn; the median per variant is
printed with its ratio to ``bf16``, and the split into batch building, forward, backward and
optimiser step. The model is the default preset's architecture with its initial weights (the
shipped tokenizer, no training before): the cost of a step does not depend on the weights.

Run: ``python benchmarks/train_step.py [--rounds R] [--threads N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def build(preset):
    """The default preset's training wrapper and video stage, weights at their initialisation."""
    from transformers import AutoTokenizer

    from vidllm.api import resolve_model_path
    from vidllm.train.scorer_training import build_dual_encoder
    from vidllm.train.trainer import VideoLLMForTraining, build_video_llm, video_stage

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("default") / "lm")
    torch.manual_seed(preset.seed)
    model = build_video_llm(preset, tokenizer, build_dual_encoder(preset, tokenizer))
    wrapper = VideoLLMForTraining.from_spec(model, preset.video)
    return wrapper, video_stage(preset, wrapper)


def timed_step(wrapper, optimizer, batch, autocast: bool) -> dict[str, float]:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    t0 = time.perf_counter()
    with ctx:
        loss, _ = wrapper(batch)
    t1 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t2 = time.perf_counter()
    optimizer.step()
    t3 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "optimiser": t3 - t2}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="rounds run first and not counted")
    parser.add_argument("--first-step", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from vidllm._system import cpu_info
    from vidllm.lm.training import register_float32_attention
    from vidllm.train.presets import get_preset

    fp32_attention = register_float32_attention()
    preset = get_preset("default")
    variants = {
        "fp32": (False, "sdpa"),
        "bf16": (True, "sdpa"),
        "bf16, fp32 attention": (True, fp32_attention),
    }
    models = {}
    for name, (_, attention) in variants.items():
        wrapper, stage = build(preset)  # the same seed: the same initial weights for each
        wrapper.model.lm.config._attn_implementation = attention
        models[name] = (wrapper.train(), torch.optim.AdamW(stage.param_groups))

    times: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    batch_seconds = []
    for r in range(args.warmup + args.rounds):
        t0 = time.perf_counter()
        batch = stage.batch_fn(args.first_step + r, 0, 1)
        batch_seconds.append(time.perf_counter() - t0)
        for name, (autocast, _) in variants.items():
            w, opt = models[name]
            out = timed_step(w, opt, batch, autocast)
            if r >= args.warmup:
                times[name].append(out)

    cpu = cpu_info()
    print(f"CPU: {cpu['model']} (torch ISA {cpu['isa']}; flags {' '.join(cpu['flags']) or '-'}), "
          f"{torch.get_num_threads()} threads; {args.rounds} rounds, median per step")  # fmt: skip
    print(f"batch building (the same for all): {statistics.median(batch_seconds[args.warmup :]):.3f} s\n")
    print("| variant | step (s) | forward | backward | optimiser | step / bf16 step |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(sum(t.values()) for t in times["bf16"])
    for name, rows in times.items():
        total = statistics.median(sum(t.values()) for t in rows)
        parts = [statistics.median(t[k] for t in rows) for k in ("forward", "backward", "optimiser")]
        print(
            f"| {name} | {total:.3f} | " + " | ".join(f"{p:.3f}" for p in parts) + f" | {total / base:.2f} |"
        )


if __name__ == "__main__":
    main()
