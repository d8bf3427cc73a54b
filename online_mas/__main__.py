"""``python -m online_mas`` runs the ``online-mas`` command."""

from __future__ import annotations

import sys

from online_mas.cli import main

if __name__ == "__main__":
    sys.exit(main())
