"""``python -m mobilevitv2 ...`` (and ``torchrun ... -m mobilevitv2 ...``): the ``mobilevitv2`` command."""

import sys

from mobilevitv2.cli import main

if __name__ == "__main__":  # importing the module (as package scanners do) runs nothing
    sys.exit(main())
