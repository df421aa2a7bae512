"""Shared helpers of the benchmark: paths and logging."""

import os
import sys

# benches/ (where raw-pipe.sh lives) and the repository root.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(HERE)


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"ERROR: {msg}")
    sys.exit(1)
