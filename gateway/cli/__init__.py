"""The ``palisade`` command line (``gateway.cli.main:main``); shared helpers in ``gateway.cli.common``."""
