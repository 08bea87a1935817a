"""Serving throughput and time to first token: the vLLM backend against the transformers backend.

One run measures, for the bundled default model (``default``: as shipped, with its own tower,
scorer and reducer) and for a small and a larger VidLM (VersatileFFN layers, random weights, the
same architecture; the larger has hidden 1024) inside the same tiny vision pipeline (a 32 px ViT
tower, the tiny CLIP scorer, the Free Video-LLM reducer), the same ``--requests`` (video,
question) pairs at each concurrency (default 1, 8 and 32):

- transformers backend at its best: requests taken ``c`` at a time and answered with one batched
  ``answer_batch`` call (left-padded ``generate``); ``c = 1`` is ``answer``. Time to first token
  is when the batch's prefill forward returns (a forward hook on the LM), from the batch's start.
- vLLM backend: ``c`` client threads, each preparing its request (the same ``VideoLLM.prepare``)
  and streaming ids from the shared engine, which batches whatever is in flight (continuous
  batching). Time to first token is when the first id reaches the client, from the request's start.

The transformers side runs on ``--threads`` torch threads, by default as many as vLLM's CPU worker
uses for the LM (all cores but one); on a machine loaded by other work, more OpenMP threads than
free cores make torch several times slower (measured: a 2-thread forward 4-10x slower than a
1-thread one at load 14 on 2 cores), which would flatter vLLM.

Answers per second are requests over the wall time of the whole set. Both backends generate
exactly ``--max-new-tokens`` tokens per request (random weights over a 50k vocabulary never hit
EOS in practice; the vLLM rows report the tokens generated), except the trained default model,
which stops after its one- or two-word answer on both. The vLLM rows use the backend's
defaults (float32, vLLM's engine in its own process); an extra row at the highest concurrency tries
bfloat16, and the time to first token of a long embedding prompt sent twice shows vLLM's prefix
cache at work on prompt embeddings. Where the time goes is printed for vLLM: the vision side
(``prepare``, in the client threads) against the LM (engine) per request.

    python benchmarks/serving.py [--requests 64] [--concurrency 1 8 32] [--configs default small large]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from vidllm.testing.vllm import QUESTIONS, tiny_vidlm_videollm, write_clips

# The same architecture at two sizes (VersatileFFN in every layer, head size 64 for vLLM's CPU attention).
CONFIGS = {
    "small": dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
    ),
    "large": dict(
        vocab_size=50304,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=6,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=64,
    ),
}
REDUCER = {"num_frames": 16, "slow_frames": 2, "middle_frames": 4, "fast_grid": [2, 2]}
# The bundled default model, as shipped (its own tower, scorer and reducer; trained weights, so its
# answers end at EOS after a word or two, on both backends alike).
NAMED = ("default",)


def build(directory: Path, name: str, layers: int | None, max_new_tokens: int) -> Path:
    if name in NAMED:
        from vidllm.api import resolve_model_path

        return resolve_model_path(name)
    overrides = dict(CONFIGS[name])
    if layers:
        overrides["num_hidden_layers"] = layers
    return tiny_vidlm_videollm(
        directory / name,
        "versatile",
        router_std=0.02,  # the default initialisation: a random mix of loop counts and slices
        reducer=REDUCER,
        max_new_tokens=max_new_tokens,
        max_position_embeddings=4096,
        **overrides,
    )


def run_hf(model, requests, concurrency: int, max_new_tokens: int) -> dict:
    """Batches of ``concurrency`` through ``answer_batch``; TTFT from a hook on the LM's first forward."""
    stamps: list[float] = []
    hook = model.lm.register_forward_hook(lambda *_: stamps.append(time.perf_counter()))
    ttft: list[float] = []
    start = time.perf_counter()
    try:
        for i in range(0, len(requests), concurrency):
            chunk = requests[i : i + concurrency]
            stamps.clear()
            batch_start = time.perf_counter()
            if concurrency == 1:
                answers = [model.answer(*chunk[0], max_new_tokens=max_new_tokens)]
            else:
                answers = model.answer_batch(
                    [v for v, _ in chunk], [q for _, q in chunk], max_new_tokens=max_new_tokens
                )
            ttft += [stamps[0] - batch_start] * len(answers)
    finally:
        hook.remove()
    wall = time.perf_counter() - start
    return {"wall": wall, "ttft": ttft, "answers_per_s": len(requests) / wall}


def run_vllm(served, requests, concurrency: int, max_new_tokens: int) -> dict:
    """``concurrency`` client threads sharing the engine; per request: prepare, then stream ids."""
    lock = threading.Lock()
    queue_index = iter(range(len(requests)))
    ttft, prepare, lm_time, generated = [], [], [], []

    def client() -> None:
        while True:
            with lock:
                i = next(queue_index, None)
            if i is None:
                return
            video, question = requests[i]
            t0 = time.perf_counter()
            prepared = served.prepare(video, question)
            t1 = time.perf_counter()
            first, count = None, 0
            for ids in served.stream_ids(prepared.embeds, max_new_tokens):
                count = len(ids)
                if first is None:
                    first = time.perf_counter()
            t2 = time.perf_counter()
            with lock:
                ttft.append(first - t0)
                prepare.append(t1 - t0)
                lm_time.append(t2 - t1)
                generated.append(count)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {
        "wall": wall,
        "ttft": ttft,
        "answers_per_s": len(requests) / wall,
        "tokens": sum(generated),
        "prepare": statistics.mean(prepare),
        "lm": statistics.mean(lm_time),
    }


def prefix_cache_ttft(served, embeds: torch.Tensor, length: int = 1024) -> tuple[float, float]:
    """TTFT of a long embedding prompt sent twice: vLLM hashes prompt embeddings per KV block, so the
    repeat reuses the cached blocks (a repeated video + question, or a follow-up turn)."""
    prompt = torch.cat([embeds] * (length // embeds.shape[0] + 1))[:length]
    times = []
    for _ in range(2):
        start = time.perf_counter()
        next(iter(served.stream_ids(prompt, 1)))
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def fmt_ttft(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):6.2f} / {ordered[int(0.9 * (len(ordered) - 1))]:6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--configs", nargs="+", default=[*NAMED, *CONFIGS], choices=[*NAMED, *CONFIGS])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--large-layers", type=int, default=None, help="override the larger config's layers")
    parser.add_argument("--no-variants", action="store_true", help="skip the bfloat16 row")
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="torch threads of this process (the transformers backend and the vision side); the default "
        "matches vLLM's CPU worker, which runs the LM on all cores but one (kept for its engine loop)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import vidllm

    print(
        f"torch threads {torch.get_num_threads()}; {args.requests} requests, {args.max_new_tokens} new tokens each"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = write_clips(tmp / "clips", 8)
        requests = [(clips[i % len(clips)], QUESTIONS[i % len(QUESTIONS)]) for i in range(args.requests)]
        rows = []
        for name in args.configs:
            directory = build(tmp, name, args.large_layers if name == "large" else None, args.max_new_tokens)
            hf = vidllm.load(directory, backend="hf")
            params = sum(p.numel() for p in hf.lm.parameters()) / 1e6
            prompt = hf.prepare(*requests[0]).embeds.shape[0]
            print(f"\n[{name}] VidLM {params:.1f}M parameters, prompt {prompt} embeddings")
            run_hf(hf, requests[:2], 2, 2)  # warm-up
            hf_results = {c: run_hf(hf, requests, c, args.max_new_tokens) for c in args.concurrency}
            del hf
            gc.collect()

            variants = [("vllm fp32", {})]
            if not args.no_variants:
                variants += [("vllm bf16", {"dtype": "bfloat16"})]
            for label, kwargs in variants:
                served = vidllm.load(directory, backend="vllm", **kwargs)
                try:
                    run_vllm(served, requests[:4], 4, 2)  # warm-up
                    if label == "vllm fp32":
                        embeds = served.prepare(*requests[0]).embeds
                        cold, warm = prefix_cache_ttft(served, embeds)
                        print(
                            f"  prefix cache, 1024-embedding prompt: TTFT {cold:.3f} s, repeated {warm:.3f} s"
                        )
                    levels = args.concurrency if label == "vllm fp32" else [max(args.concurrency)]
                    for c in levels:
                        v = run_vllm(served, requests, c, args.max_new_tokens)
                        h = hf_results[c]
                        rows.append((name, label, c, h, v))
                        print(
                            f"  {label:10s} c={c:3d}  hf {h['answers_per_s']:6.2f} ans/s  vllm {v['answers_per_s']:6.2f} "
                            f"ans/s  ratio {v['answers_per_s'] / h['answers_per_s']:5.2f}x   TTFT median/p90 s: "
                            f"hf {fmt_ttft(h['ttft'])}  vllm {fmt_ttft(v['ttft'])}   vllm per request: prepare "
                            f"{v['prepare']:.3f} s, LM {v['lm']:.3f} s, {v['tokens'] / len(requests):.1f} tokens",
                            flush=True,
                        )
                finally:
                    served.close()
                    del served
                    gc.collect()

    print("\nsummary: vLLM / transformers (batched) answers per second, and TTFT medians")
    print(
        f"{'config':7s} {'vllm':10s} {'c':>3s} {'hf ans/s':>9s} {'vllm ans/s':>10s} {'ratio':>6s} {'hf TTFT':>8s} {'vllm TTFT':>9s}"
    )
    for name, label, c, h, v in rows:
        print(
            f"{name:7s} {label:10s} {c:3d} {h['answers_per_s']:9.2f} {v['answers_per_s']:10.2f} "
            f"{v['answers_per_s'] / h['answers_per_s']:5.2f}x {statistics.median(h['ttft']):8.2f} "
            f"{statistics.median(v['ttft']):9.2f}"
        )


if __name__ == "__main__":
    main()
