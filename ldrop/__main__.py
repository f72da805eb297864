"""``python -m ldrop``: the ``ldrop`` command (as ``python -m ldrop.cli``)."""

import sys

from ldrop.cli import main

sys.exit(main())
