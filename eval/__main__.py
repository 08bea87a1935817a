"""``python -m eval`` (and ``accelerate launch -m eval``): see :mod:`eval.cli`."""

import sys

from eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
