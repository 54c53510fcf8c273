"""``python -m gateway.cli``: the ``palisade`` command."""

import sys

from gateway.cli.main import main

sys.exit(main())
