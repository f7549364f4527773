"""``python -m nbmodule``: see :mod:`nbmodule.cli`."""
import sys

from .cli import main

sys.exit(main())
