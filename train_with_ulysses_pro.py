#!/usr/bin/env python
"""Entry point kept for users of the original script name.

    python train_with_ulysses_pro.py --config_file cfg.yaml [--key value | key=value ...]

is the same as `ulysses-pro train cfg.yaml ...`.
"""

import sys
from pathlib import Path

try:
    from ulysses_pro.cli import main
except ImportError:  # running from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from ulysses_pro.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
