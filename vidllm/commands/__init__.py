"""One module per ``vidllm`` subcommand, each with ``add_arguments(parser)`` and ``run(args) -> int``."""
