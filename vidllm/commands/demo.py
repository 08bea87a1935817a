"""``vidllm demo`` (and ``python app.py``, which takes the same flags): the Gradio demo.

Serves on http://127.0.0.1:7860 by default, offline; ``--share`` (off by default) asks Gradio for
a public tunnel, which needs the internet.
"""

from __future__ import annotations

import argparse
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="default", help="bundled model name or model directory (default: default)"
    )
    parser.add_argument(
        "--backend",
        default="hf",
        choices=["hf", "vllm"],
        help="backend loaded at start and preselected on the page: transformers (hf, default) or vLLM",
    )
    parser.add_argument("--device", default=None, help="where the model runs (default: cuda if available)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also open a public Gradio link (needs the internet; off by default)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-upload-mb", type=float, default=100.0, help="largest upload (default 100 MB)")
    limits.add_argument(
        "--max-video-seconds", type=float, default=600.0, help="longest video decoded (default 600 s)"
    )
    limits.add_argument(
        "--max-video-pixels", type=int, default=4096 * 4096, help="largest frame, width x height"
    )
    limits.add_argument(
        "--decode-timeout", type=float, default=60.0, help="seconds one video may take to decode"
    )
    limits.add_argument(
        "--concurrency-limit", type=int, default=4, help="requests worked on at once (default 4)"
    )
    limits.add_argument(
        "--max-queue", type=int, default=64, help="requests that may wait beyond those (default 64)"
    )
    limits.add_argument(
        "--max-new-tokens", type=int, default=None, help="answer length limit (default: the model's)"
    )
    vllm = parser.add_argument_group("vLLM backend")
    vllm.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16, auto")
    vllm.add_argument("--kv-cache-gb", type=float, default=None, help="KV cache size (CPU default 1 GiB)")
    vllm.add_argument(
        "--engine-in-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run vLLM's engine core in this process (faster start-up on small CPU machines)",
    )


def config_from_args(args: argparse.Namespace):
    """The :class:`~vidllm.demo.DemoConfig` the flags describe."""
    from vidllm.demo.core import DemoConfig

    vllm_options: dict = {}
    if args.dtype:
        vllm_options["dtype"] = args.dtype
    if args.kv_cache_gb:
        vllm_options["kv_cache_memory_bytes"] = int(args.kv_cache_gb * (1 << 30))
    if args.engine_in_process is not None:
        vllm_options["engine_in_process"] = args.engine_in_process
    return DemoConfig(
        model=args.model,
        backend=args.backend,
        device=args.device,
        host=args.host,
        port=args.port,
        share=args.share,
        max_upload_mb=args.max_upload_mb,
        max_video_seconds=args.max_video_seconds,
        max_video_pixels=args.max_video_pixels,
        decode_timeout_s=args.decode_timeout,
        concurrency_limit=args.concurrency_limit,
        max_queue=args.max_queue,
        max_new_tokens=args.max_new_tokens,
        vllm_options=vllm_options,
    )


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    from vidllm.demo.core import DemoError, ModelPool

    try:
        config = config_from_args(args)
        pool = ModelPool(config.model, device=config.device, vllm_options=config.vllm_options)
        pool.get(config.backend)  # load now: a missing or broken model fails here, not on the first question
    except (FileNotFoundError, ValueError, DemoError) as exc:
        print(f"vidllm demo: {exc}", file=sys.stderr)
        return 2
    try:
        from vidllm.demo.ui import build_demo, launch

        demo = build_demo(pool, config)
        # Gradio stops on Ctrl-C only; a SIGTERM would leave vLLM's engine process orphaned.
        signal.signal(signal.SIGTERM, _interrupt)
        print(
            f"vidllm demo: {pool.path} ({config.backend}) on http://{config.host}:{config.port}", flush=True
        )
        launch(demo, config)
    except ImportError as exc:
        print(f"vidllm demo: {exc}", file=sys.stderr)
        return 2
    finally:
        pool.close()
    return 0
