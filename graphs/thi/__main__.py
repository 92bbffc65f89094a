"""``python -m graphs.thi``: see :mod:`graphs.thi.cli`."""

import sys

from .cli import main

sys.exit(main())
