"""``python -m mobilevitv2 ...`` (and ``torchrun ... -m mobilevitv2 ...``): the ``mobilevitv2`` command."""

import sys

from mobilevitv2.cli import main

sys.exit(main())
