"""Dense vs VersatileFFN vs ParameterNet language models: FLOPs per token and tokens per second,
measured side by side in one run and printed as ratios to the dense model.

Fair comparison. The three FFN designs trade parameters and FLOPs differently, so two pairings are
shown, all on the ``vidlm-small`` decoder (attention, embeddings and head identical):

- equal total parameters: dense and VersatileFFN share the intermediate size (VersatileFFN adds only
  its two routers, (8 + 4) x hidden per layer); ParameterNet's intermediate size is cut so that
  gate + up + 8 down experts + router hold as many parameters as the dense SwiGLU;
- equal active FLOPs: ParameterNet at the dense intermediate size (the paper's use: ~3.3x the FFN
  parameters for ~the same FLOPs).

VersatileFFN's cost depends on routing: it is shown with random routers (loop counts spread over
1..4) and with the depth router at zero (every token one loop, as right after ``upcycle``).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a prefill forward (matmuls,
attention included; FLOPs = 2 x MACs). Throughput: prefill = one forward over ``batch x prompt``
tokens; decode = ``generate`` with the KV cache, new tokens per second. Models are timed in
interleaved rounds and the best round is kept, so load from other processes hits all alike.

Also measured: the VersatileFFN width path's two dispatch strategies for computing only the chosen
slices, grouping tokens by expert (used) versus gathering each token's slice weights.

Run: ``python benchmarks/lm_ffn.py [--threads N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vidllm.lm import VidLMForCausalLM, vidlm_config

BASE = "vidlm-small"


def parameternet_equal_params_size(hidden: int, inter: int, experts: int) -> int:
    """Intermediate size whose ParameterNet FFN (2HI' + EHI' + EI') matches the dense 3HI, rounded to 8."""
    exact = 3 * hidden * inter / (2 * hidden + experts * hidden + experts)
    return max(8, round(exact / 8) * 8)


def build_models() -> dict[str, tuple[VidLMForCausalLM, str]]:
    base = vidlm_config(BASE)
    hidden, inter, experts = base.hidden_size, base.intermediate_size, base.num_parameternet_experts
    small_inter = parameternet_equal_params_size(hidden, inter, experts)
    specs = {
        "dense": (dict(ffn_type="dense"), "reference"),
        "versatile (random routers)": (dict(ffn_type="versatile"), "equal params"),
        "versatile (1 loop, upcycled)": (dict(ffn_type="versatile"), "equal params"),
        f"parameternet I={small_inter}": (
            dict(ffn_type="parameternet", intermediate_size=small_inter),
            "equal params",
        ),
        f"parameternet I={inter}": (dict(ffn_type="parameternet"), "equal FLOPs"),
    }
    models = {}
    for name, (overrides, pairing) in specs.items():
        torch.manual_seed(0)
        model = VidLMForCausalLM(vidlm_config(BASE, **overrides)).eval()
        if "versatile" in name:
            with torch.no_grad():
                for layer in model.model.layers:
                    if "1 loop" in name:
                        layer.mlp.depth_router.weight.zero_()
                    else:  # strong enough logits that argmax varies from token to token
                        layer.mlp.depth_router.weight.normal_(std=0.5)
        models[name] = (model, pairing)
    return models


def count_flops(model: VidLMForCausalLM, ids: torch.Tensor) -> tuple[float, float | None]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(ids, use_cache=False, output_routing=True)
    loops = [
        r.loop_counts.float().mean().item()
        for r in out.routing
        if r is not None and r.loop_counts is not None
    ]
    return counter.get_total_flops() / ids.numel(), (sum(loops) / len(loops) if loops else None)


def best_times(jobs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time of each job over ``rounds`` interleaved rounds (after one warm-up each)."""
    for job in jobs.values():
        job()
    best = dict.fromkeys(jobs, float("inf"))
    for _ in range(rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def width_dispatch(rounds: int) -> list[tuple[int, float, float]]:
    """Seconds for the width path (top-2 of 8 slices) grouped by expert vs per-token weight gather."""
    torch.manual_seed(0)
    mlp = VidLMForCausalLM(vidlm_config(BASE, ffn_type="versatile")).model.layers[0].mlp
    experts, size, hidden = mlp.num_width_experts, mlp.slice_size, mlp.hidden_size
    gate = mlp.gate_proj.weight.view(experts, size, hidden)
    up = mlp.up_proj.weight.view(experts, size, hidden)
    down = mlp.down_proj.weight.view(hidden, experts, size).permute(1, 0, 2)

    def gathered(x, index, weights):
        g = torch.einsum("nh,nksh->nks", x, gate[index])
        u = torch.einsum("nh,nksh->nks", x, up[index])
        return torch.einsum("nks,nkhs,nk->nh", F.silu(g) * u, down[index], weights)

    rows = []
    with torch.no_grad():
        for tokens in (1, 4, 32, 256):
            x = torch.randn(tokens, hidden)
            top, index = torch.randn(tokens, experts).topk(2)
            weights = top.softmax(-1)
            torch.testing.assert_close(
                gathered(x, index, weights), mlp._width(x, index, weights), atol=1e-4, rtol=1e-4
            )
            times = best_times(
                {
                    "grouped": functools.partial(mlp._width, x, index, weights),
                    "gathered": functools.partial(gathered, x, index, weights),
                },
                rounds,
            )
            rows.append((tokens, times["grouped"], times["gathered"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; the best is kept")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per sequence")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per sequence")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    models = build_models()
    torch.manual_seed(1)
    base = vidlm_config(BASE)
    ids = torch.randint(0, base.vocab_size, (args.batch, args.prompt))
    print(
        f"{BASE}: hidden {base.hidden_size}, intermediate {base.intermediate_size}, {base.num_hidden_layers} layers, "
        f"vocab {base.vocab_size}; batch {args.batch} x prompt {args.prompt}, {args.new_tokens} new tokens; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.rounds} interleaved rounds"
    )

    stats = {}
    for name, (model, pairing) in models.items():
        flops, loops = count_flops(model, ids)
        stats[name] = dict(
            pairing=pairing, params=sum(p.numel() for p in model.parameters()), flops=flops, loops=loops
        )

    def prefill(model):
        with torch.no_grad():
            model(ids, use_cache=False)

    def decode(model):
        model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)

    prefill_s = best_times({n: (lambda m=m: prefill(m)) for n, (m, _) in models.items()}, args.rounds)
    decode_s = best_times({n: (lambda m=m: decode(m)) for n, (m, _) in models.items()}, args.rounds)

    ref = stats["dense"]
    ref_prefill = ids.numel() / prefill_s["dense"]
    ref_decode = args.batch * args.new_tokens / decode_s["dense"]
    header = (
        f"{'model':<30} {'pairing':<13} {'params M':>9} {'x':>5} {'GFLOP/tok':>10} {'x':>5} "
        f"{'prefill tok/s':>14} {'x':>5} {'decode tok/s':>13} {'x':>5} {'mean loops':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, s in stats.items():
        pre = ids.numel() / prefill_s[name]
        dec = args.batch * args.new_tokens / decode_s[name]
        loops = "-" if s["loops"] is None else f"{s['loops']:.2f}"
        print(
            f"{name:<30} {s['pairing']:<13} {s['params'] / 1e6:>9.2f} {s['params'] / ref['params']:>5.2f} "
            f"{s['flops'] / 1e9:>10.4f} {s['flops'] / ref['flops']:>5.2f} "
            f"{pre:>14.0f} {pre / ref_prefill:>5.2f} {dec:>13.1f} {dec / ref_decode:>5.2f} {loops:>10}"
        )
    print(
        "x: ratio to dense. Equal params: dense/versatile share the SwiGLU (versatile adds 12 x hidden router "
        "weights per layer); parameternet's intermediate size is cut so its 8 down experts + router fit the "
        "dense FFN's parameters. Equal FLOPs: parameternet at the dense intermediate size."
    )

    print("\nVersatileFFN width path (top-2 of 8 slices), one layer: grouped by expert vs per-token gather")
    for tokens, grouped, gathered in width_dispatch(args.rounds):
        print(
            f"  {tokens:>4} tokens: grouped {grouped * 1e3:8.3f} ms, gathered {gathered * 1e3:8.3f} ms, "
            f"gathered / grouped = {gathered / grouped:5.2f}"
        )


if __name__ == "__main__":
    main()
