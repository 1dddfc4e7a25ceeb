"""``python -m PASTALib`` runs the ``pasta`` command."""

import sys

from PASTALib.cli.main import main

sys.exit(main())
