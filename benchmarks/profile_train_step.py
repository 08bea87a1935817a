"""Where the default preset's video-stage training step spends its time: torch.profiler's table.

``benchmarks/train_step.py`` times whole steps and their forward / backward / optimiser split side
by side; this profiles a few steps of one variant by operator (self CPU time), to see which
kernels a cheaper step would have to avoid. The model is built as that benchmark builds it (the
default preset's architecture at its initial weights, the shipped tokenizer); a few steps run
first, unprofiled, so that one-time costs stay out of the table.

    python benchmarks/profile_train_step.py [--steps 6] [--first-step 1000] [--shapes] [--set KEY=VALUE]

``--shapes`` groups the operators by their input shapes (which matmul is the LM's FFN, which the
attention's projections).
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("profile_train_step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=3, help="unprofiled steps before them")
    parser.add_argument("--first-step", type=int, default=1000, help="the preset's batch to start at")
    parser.add_argument("--shapes", action="store_true", help="group operators by input shapes")
    parser.add_argument("--rows", type=int, default=30, help="rows of the table")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the default preset (as vidllm train --set)")  # fmt: skip
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch
    from torch.profiler import ProfilerActivity, profile
    from train_step import build_stage  # the benchmark beside this file

    from vidllm.commands.train import parse_override

    stage = build_stage("video", False, dict(map(parse_override, args.overrides)))
    module = stage.module.train()
    optimizer = torch.optim.AdamW(stage.param_groups)
    trainable = [p for g in stage.param_groups for p in g["params"] if p.requires_grad]

    def step(index: int) -> None:  # as vidllm.train.loop.run_stage steps, in float32
        stage.on_step(module, index)
        loss, _ = stage.loss_fn(module, stage.batch_fn(index, 0, 1), index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, stage.grad_clip)
        optimizer.step()

    first = args.first_step
    for index in range(first, first + args.warmup):
        step(index)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for index in range(first + args.warmup, first + args.warmup + args.steps):
            step(index)
    table = prof.key_averages(group_by_input_shape=args.shapes).table(
        sort_by="self_cpu_time_total", row_limit=args.rows
    )
    logger.info("video stage of the default preset, %d steps from step %d\n%s", args.steps,
                first + args.warmup, table)  # fmt: skip


if __name__ == "__main__":
    main()
