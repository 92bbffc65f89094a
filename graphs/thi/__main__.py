"""``python -m graphs.thi``: see :mod:`graphs.thi.cli`."""

import os
import sys

from .cli import main

status = main()
if status == 130:
    # Ctrl-C: a node may still be blocked in an MLLM call on a worker thread; do not wait for it
    # (the checkpoint, if any, holds every finished step)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
