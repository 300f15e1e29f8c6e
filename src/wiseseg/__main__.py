"""``python -m wiseseg`` is the ``wiseseg`` command."""

import sys

from wiseseg.cli import main

sys.exit(main())
