"""`python -m ulysses_pro` (and `torchrun -m ulysses_pro`) run the CLI."""

import sys

from .cli import main

sys.exit(main())
