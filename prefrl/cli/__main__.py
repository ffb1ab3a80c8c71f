"""``python -m prefrl.cli ...``: the same as the ``prefrl`` command."""

import sys

from prefrl.cli.main import main

sys.exit(main())
