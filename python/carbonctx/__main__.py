"""``python -m carbonctx``: the same as the ``carbonctx`` command."""

import sys

from carbonctx._cli import main

sys.exit(main())
