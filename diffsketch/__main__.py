"""``python -m diffsketch``: the command line, also as launched by ``torchrun -m diffsketch``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
