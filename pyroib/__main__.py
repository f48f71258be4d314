"""``python -m pyroib COMMAND ...``: the same as the ``pyroib`` command."""

import sys

from pyroib.cli import main

sys.exit(main())
