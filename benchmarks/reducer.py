"""Prefill cost of the reduced video input versus all sampled frames at full resolution.

For one video and question, builds the LM input twice — once through the Free Video-LLM reducer
(and the uniform baseline at the same budget), once with every sampled frame at full resolution —
and measures, side by side in one run: visual tokens, prefill FLOPs of the language model
(``torch.utils.flop_counter``; MACs = FLOPs / 2) and prefill latency (median of interleaved
repetitions), printed as ratios to the full input. Prefill cost depends on the model's shape and
the sequence length, not on its trained weights, so ``--random-lm`` measures a model of a chosen
size where no trained one of that size exists.

    python benchmarks/reducer.py --model default
    python benchmarks/reducer.py --random-lm hidden=1024,layers=8 --num-frames 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidllm.reducer import UniformConfig


def _lm_prefill(model, embeds: torch.Tensor) -> None:
    model.lm(inputs_embeds=embeds[None], use_cache=False)


def prefill_flops(model, embeds: torch.Tensor) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        _lm_prefill(model, embeds)
    return counter.get_total_flops()


def build_model(args):
    if args.random_lm is None:
        import vidllm

        return vidllm.load(args.model, device="cpu")
    from vidllm.testing.tiny import tiny_video_llm

    sizes = dict(item.split("=") for item in args.random_lm.split(","))
    hidden, layers, head_dim = int(sizes.get("hidden", 256)), int(sizes.get("layers", 4)), 64
    overrides = {
        "hidden_size": hidden,
        "intermediate_size": hidden * 4,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // head_dim,
        "num_key_value_heads": max(1, hidden // head_dim // 4),
        "max_position_embeddings": 16384,
    }
    return tiny_video_llm(args.ffn_type, seed=0, num_frames=args.num_frames, lm_overrides=overrides)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default", help="bundled model name or directory")
    parser.add_argument("--random-lm", default=None, help="measure a random LM instead: hidden=N,layers=N")
    parser.add_argument("--ffn-type", default="versatile", help="the random LM: llama, or a VidLM FFN type")
    parser.add_argument("--num-frames", type=int, default=50)
    parser.add_argument("--video", default=None, help="a video file (default: a generated clip)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model(args)
    if args.video is not None:
        video = args.video
    else:
        rng = np.random.default_rng(0)
        video = rng.integers(0, 256, size=(args.num_frames, 96, 128, 3), dtype=np.uint8)
    question = "What color is the square?"
    grid = model.tower.grid
    reduced = model.prepare(video, question)
    budget = reduced.reduction.num_tokens
    uniform = model.prepare(video, question, reducer="uniform", budget=budget)
    frames = len(reduced.sampled_indices)
    full_config = UniformConfig(num_frames=frames, pool_stride=1)
    full_budget = frames * grid[0] * grid[1]
    full = model.prepare(video, question, reducer="uniform", budget=full_budget)
    if full.reduction.config != full_config:
        raise RuntimeError(f"expected the full input to be {full_config}, got {full.reduction.config}")

    inputs = {
        "free-video-llm": reduced,
        "uniform (same budget)": uniform,
        "all frames, full resolution": full,
    }
    flops = {name: prefill_flops(model, p.embeds) for name, p in inputs.items()}
    latencies: dict[str, list[float]] = {name: [] for name in inputs}
    with torch.inference_mode():
        for p in inputs.values():  # warm-up
            _lm_prefill(model, p.embeds)
        for _ in range(args.repeats):
            for name, p in inputs.items():  # interleaved, so load changes hit every input alike
                start = time.perf_counter()
                _lm_prefill(model, p.embeds)
                latencies[name].append(time.perf_counter() - start)

    base = "all frames, full resolution"
    print(
        f"model: {args.model if args.random_lm is None else 'random LM ' + args.random_lm} ({args.ffn_type})"
    )
    print(
        f"tower grid {grid[0]}x{grid[1]}, {frames} sampled frames, {args.repeats} interleaved repetitions\n"
    )
    header = f"{'input':<30} {'visual tok':>10} {'LM tokens':>10} {'prefill GMACs':>14} {'prefill ms':>11} {'tokens':>8} {'MACs':>8} {'latency':>8}"
    print(header)
    print("-" * len(header))
    for name, p in inputs.items():
        median = statistics.median(latencies[name])
        print(
            f"{name:<30} {p.reduction.num_tokens:>10} {p.embeds.shape[0]:>10} {flops[name] / 2e9:>14.3f} "
            f"{median * 1e3:>11.1f} {p.reduction.num_tokens / inputs[base].reduction.num_tokens:>8.3f} "
            f"{flops[name] / flops[base]:>8.3f} {median / statistics.median(latencies[base]):>8.3f}"
        )
    print("\nratios are to the full input (last three columns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
