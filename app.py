"""The Gradio demo: ``python app.py [--model PATH] [--port 7860] ...`` (the same as ``vidllm demo``).

Everything is in :mod:`vidllm.demo` (the page and its request path) and
:mod:`vidllm.commands.demo` (the flags); ``python app.py --help`` lists them.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vidllm.commands import demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="app.py", description="Gradio demo of vidllm's video question answering."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    demo.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    return demo.run(args)


if __name__ == "__main__":
    sys.exit(main())
