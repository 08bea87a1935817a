"""Zoo benchmark: params, MACs and CPU throughput of every variant, side by side with timm.

For each registered variant: parameters, MACs at the published input size (batch 1, eval), and CPU
images/s at batch 8 in ``torch.inference_mode``, measured in the same run as timm's equivalent:

* a *twin* is timm's implementation of the same model (``tinynet_*``, ``ghostnet_*``,
  ``ghostnetv2_*``, ``tnt_*``): same weights layout, so ``ours / timm >= 1.0`` is the target;
* a *baseline* is the network the variant modifies (``spconv_resnet50`` and ``drnet_resnet50`` vs
  ``resnet50``, ``g_ghost_regnetx_*`` vs ``regnetx_*``): a different model, shown for scale.

Timing alternates ours and timm's in rounds (so both see the same machine load) and reports the
median over rounds of the per-round mean, as images/s (wall clock) and as the ratio of CPU time
spent on the same batches ("CPU-time": timm's CPU seconds / ours; the steadier figure when other
processes share the cores). DRNet runs with an untrained predictor, so its routing
(and speed) is arbitrary; its trained behaviour is ``benchmarks/drnet_digits.py``.

A second table compares ViG's kNN graph construction (``layers.graph.knn_graph``) with a plain
dense implementation of the official formula (full ``|x|^2 - 2 x.y + |y|^2`` matrix, ``topk``,
dilation by slicing) at the node counts of ViG-Ti and of Pyramid ViG's first stage.

    .venv/bin/python benchmarks/backbones.py                      # every variant
    .venv/bin/python benchmarks/backbones.py --models 'tinynet_*' 'ghostnet*' --rounds 5
    .venv/bin/python benchmarks/backbones.py --knn-only
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from timm.models import _registry as timm_registry

import efficient_backbones as eb
from efficient_backbones._macs import count_macs, count_params
from efficient_backbones._paper_figures import PAPER_FIGURES
from efficient_backbones._registry import family_module

BATCH = 8
BASELINES = {
    "spconv_resnet50": "resnet50",
    "drnet_resnet50": "resnet50",
    "g_ghost_regnetx_032": "regnetx_032",
    "g_ghost_regnetx_040": "regnetx_040",
    "g_ghost_regnetx_080": "regnetx_080",
    "g_ghost_regnetx_160": "regnetx_160",
}


def timm_counterpart(name: str) -> tuple[str | None, str]:
    """(timm model name, "twin" | "baseline" | "-")."""
    if timm_registry.is_model(name) and timm_registry.model_entrypoint(name) is not eb.model_entrypoint(name):
        return name, "twin"
    if name in BASELINES:
        return BASELINES[name], "baseline"
    return None, "-"


def _time_once(fn: Callable[[], object], iters: int) -> tuple[float, float]:
    """Mean wall-clock and process CPU seconds per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - wall) / iters, (time.process_time() - cpu) / iters


def interleaved_seconds(
    fns: list[Callable[[], object]], rounds: int, iters: int
) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per call of each function: medians over rounds that alternate the functions.

    CPU time is reported beside wall time because on a shared machine the wall clock also counts the
    time other processes hold the cores; the CPU time of the same work is far less sensitive to that.
    """
    for fn in fns:  # warm-up (allocator, oneDNN primitive caches)
        fn()
        fn()
    samples: list[list[tuple[float, float]]] = [[] for _ in fns]
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            samples[i].append(_time_once(fns[i], iters))
    return [(statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for s in samples]


def _input_size(name: str, model: torch.nn.Module) -> int:
    if name in PAPER_FIGURES:
        return PAPER_FIGURES[name].input_size
    return int(model.pretrained_cfg["input_size"][-1])


def bench_model(name: str, rounds: int, iters: int) -> dict:
    torch.manual_seed(0)
    ours = eb.create_model(name).eval()
    size = _input_size(name, ours)
    x = torch.randn(BATCH, 3, size, size)
    row = {"name": name, "size": size, "params": count_params(ours), "macs": count_macs(ours, inputs=x[:1])}
    ref_name, kind = timm_counterpart(name)
    fns = [lambda: ours(x)]
    ref = None
    if ref_name is not None:
        ref = timm.create_model(ref_name).eval()
        if kind == "twin":  # the same weights on both sides
            ours.load_state_dict(
                family_module(name).checkpoint_filter_fn(ref.state_dict(), ours), strict=True
            )
        fns.append(lambda: ref(x))
        row.update(
            ref=ref_name, kind=kind, ref_params=count_params(ref), ref_macs=count_macs(ref, inputs=x[:1])
        )
    with torch.inference_mode():
        seconds = interleaved_seconds(fns, rounds, iters)
    row["ips"], row["cpu_ratio"] = BATCH / seconds[0][0], None
    if ref is not None:
        row["ref_ips"] = BATCH / seconds[1][0]
        row["cpu_ratio"] = seconds[1][1] / seconds[0][1]  # timm's CPU seconds / ours
    return row


HEADER = (
    f"{'model':<22}{'px':>5}{'params M':>10}{'GMACs':>8}{'img/s':>9}   "
    f"{'timm equivalent':<22}{'kind':<9}{'params M':>9}{'GMACs':>8}{'img/s':>9}{'ours/timm':>11}{'CPU-time':>10}"
)


def format_row(r: dict) -> str:
    line = (
        f"{r['name']:<22}{r['size']:>5}{r['params'] / 1e6:>10.2f}{r['macs'] / 1e9:>8.3f}{r['ips']:>9.1f}   "
    )
    if "ref" in r:
        line += (
            f"{r['ref']:<22}{r['kind']:<9}{r['ref_params'] / 1e6:>9.2f}{r['ref_macs'] / 1e9:>8.3f}"
            f"{r['ref_ips']:>9.1f}{r['ips'] / r['ref_ips']:>11.2f}{r['cpu_ratio']:>10.2f}"
        )
    else:
        line += "(none in timm)"
    return line


def print_summary(rows: list[dict]) -> None:
    twins = [r for r in rows if r.get("kind") == "twin"]
    if twins:
        for label, ratios in (
            ("throughput (wall)", [r["ips"] / r["ref_ips"] for r in twins]),
            ("CPU time", [r["cpu_ratio"] for r in twins]),
        ):
            below = [r["name"] for r, q in zip(twins, ratios) if q < 1.0]
            print(
                f"twins, ours/timm {label}: min {min(ratios):.2f}, median {statistics.median(ratios):.2f}, "
                f"max {max(ratios):.2f}; below 1.0: {', '.join(below) or 'none'}"
            )


# ---------------------------------------------------------------------------------------------
# ViG kNN graph construction


def dense_knn(x: torch.Tensor, y: torch.Tensor, k: int, dilation: int) -> torch.Tensor:
    """The official formula, written plainly: full squared-distance matrix, topk, every d-th."""
    with torch.no_grad():
        x = F.normalize(x, dim=1).transpose(1, 2)  # (B, N, C)
        y = F.normalize(y, dim=1).transpose(1, 2)  # (B, M, C)
        x_sq = (x * x).sum(-1, keepdim=True)  # (B, N, 1)
        y_sq = (y * y).sum(-1).unsqueeze(1)  # (B, 1, M)
        dist = x_sq - 2 * x @ y.transpose(1, 2) + y_sq
        _, idx = torch.topk(-dist, k * dilation, dim=-1)
        return idx[..., ::dilation]


def bench_knn(rounds: int, iters: int) -> None:
    from efficient_backbones.layers.graph import knn_graph

    cases = [
        # (label, batch, channels, query nodes, key nodes, k, dilation)
        ("ViG-Ti block 1 (14x14, k=9)", BATCH, 192, 196, 196, 9, 1),
        ("ViG-Ti block 12 (14x14, k=18, d=3)", BATCH, 192, 196, 196, 18, 3),
        ("PViG-Ti stage 1 (56x56 over 14x14)", BATCH, 48, 3136, 196, 9, 1),
        ("PViG-S stage 2 (28x28 over 14x14)", BATCH, 160, 784, 196, 9, 2),
    ]
    header = f"{'kNN case':<38}{'ours ms':>9}{'dense ms':>10}{'dense/ours':>12}  same neighbours"
    print("\n" + header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    for label, b, c, n, m, k, d in cases:
        x = torch.randn(b, c, n, generator=gen)
        y = x if n == m else torch.randn(b, c, m, generator=gen)
        key = None if n == m else y
        ours_idx, dense_idx = knn_graph(x, key, k=k, dilation=d), dense_knn(x, y, k, d)
        # Ties aside, both pick the same set of neighbours for every node.
        same = (ours_idx.sort(-1).values == dense_idx.sort(-1).values).float().mean().item()
        ours_fn = functools.partial(knn_graph, x, key, k=k, dilation=d)
        dense_fn = functools.partial(dense_knn, x, y, k, d)
        with torch.inference_mode():
            (t_ours, _), (t_dense, _) = interleaved_seconds([ours_fn, dense_fn], rounds, iters)
        print(
            f"{label:<38}{t_ours * 1e3:>9.2f}{t_dense * 1e3:>10.2f}{t_dense / t_ours:>12.2f}  {same:.2%}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", default=["*"], help="wildcards over list_models()")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--knn-only", action="store_true")
    parser.add_argument("--no-knn", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}, batch {BATCH}"
    )
    if not args.knn_only:
        names = [n for n in eb.list_models() if any(fnmatch.fnmatch(n, p) for p in args.models)]
        print("\n" + HEADER + "\n" + "-" * len(HEADER), flush=True)
        rows = []
        for name in names:
            rows.append(bench_model(name, args.rounds, args.iters))
            print(format_row(rows[-1]), flush=True)
        print()
        print_summary(rows)
    if not args.no_knn and eb.is_model("vig_ti_224"):
        bench_knn(args.rounds, max(args.iters, 5))


if __name__ == "__main__":
    main()
