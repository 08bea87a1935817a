"""``vidllm serve``: the OpenAI-compatible chat-completions server (see ``vidllm.serving.server``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="default", help="bundled model name or model directory (default: default)"
    )
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="the name clients send as 'model' (default: the model's folder name)",
    )
    parser.add_argument(
        "--backend", default="vllm", choices=["vllm", "hf"], help="vLLM (default) or transformers"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--device", default=None, help="where the vision side runs (default: cuda if available)"
    )
    parser.add_argument(
        "--video-root",
        type=Path,
        default=None,
        help="local video paths in requests must lie under this folder",
    )
    parser.add_argument(
        "--max-request-mb", type=float, default=64.0, help="largest request body (default 64 MB)"
    )
    parser.add_argument(
        "--max-video-mb", type=float, default=48.0, help="largest video, base64 or uploaded (default 48)"
    )
    parser.add_argument(
        "--max-video-seconds", type=float, default=3600.0, help="longest video (default 3600 s)"
    )
    parser.add_argument(
        "--max-video-pixels", type=int, default=4096 * 4096, help="largest frame, width x height"
    )
    parser.add_argument(
        "--decode-timeout", type=float, default=60.0, help="seconds one video may take to decode"
    )
    parser.add_argument(
        "--max-tokens-limit", type=int, default=256, help="largest max_tokens a request may ask for"
    )
    parser.add_argument(
        "--max-frames-limit", type=int, default=128, help="largest num_frames a request may ask for"
    )
    vllm = parser.add_argument_group("vLLM backend")
    vllm.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16, auto")
    vllm.add_argument("--kv-cache-gb", type=float, default=None, help="KV cache size (CPU default 1 GiB)")
    vllm.add_argument("--max-num-seqs", type=int, default=None, help="most requests in one engine step")
    vllm.add_argument("--tensor-parallel-size", type=int, default=None)
    vllm.add_argument(
        "--engine-in-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run vLLM's engine core in the server process (faster start-up on small CPU machines)",
    )


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The vLLM options the flags set (unset flags keep the backend's defaults)."""
    kwargs: dict = {}
    if args.dtype:
        kwargs["dtype"] = args.dtype
    if args.kv_cache_gb:
        kwargs["kv_cache_memory_bytes"] = int(args.kv_cache_gb * (1 << 30))
    if args.max_num_seqs:
        kwargs["max_num_seqs"] = args.max_num_seqs
    if args.tensor_parallel_size:
        kwargs["tensor_parallel_size"] = args.tensor_parallel_size
    if args.engine_in_process is not None:
        kwargs["engine_in_process"] = args.engine_in_process
    return kwargs


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import uvicorn

    import vidllm
    from vidllm.api import resolve_model_path
    from vidllm.serving.server import ServerConfig, create_app
    from vidllm.video import get_default_limits, set_default_limits

    if args.video_root is not None and not args.video_root.is_dir():
        print(f"vidllm serve: --video-root {args.video_root} is not a folder", file=sys.stderr)
        return 2
    max_video_bytes = int(args.max_video_mb * (1 << 20))
    set_default_limits(
        dataclasses.replace(
            get_default_limits(),
            max_duration_s=args.max_video_seconds,
            max_pixels=args.max_video_pixels,
            max_file_bytes=max(max_video_bytes, 1),
            timeout_s=args.decode_timeout,
        )
    )
    try:
        path = resolve_model_path(args.model)
        kwargs = engine_kwargs(args) if args.backend == "vllm" else {}
        model = vidllm.load(path, backend=args.backend, device=args.device, **kwargs)
    except (FileNotFoundError, ImportError, ValueError) as exc:
        print(f"vidllm serve: {exc}", file=sys.stderr)
        return 2
    config = ServerConfig(
        model_name=args.served_model_name or path.name,
        video_root=args.video_root,
        max_request_bytes=int(args.max_request_mb * (1 << 20)),
        max_video_bytes=max_video_bytes,
        max_new_tokens=args.max_tokens_limit,
        max_num_frames=args.max_frames_limit,
    )
    print(
        f"vidllm serve: {config.model_name!r} ({args.backend}) on http://{args.host}:{args.port}/v1",
        flush=True,
    )
    try:
        uvicorn.run(create_app(model, config), host=args.host, port=args.port, log_level="warning")
    finally:
        close = getattr(model, "close", None)
        if close is not None:
            close()
    return 0
