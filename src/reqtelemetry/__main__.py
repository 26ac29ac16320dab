"""``python -m reqtelemetry``: the ``reqtelemetry`` command, where no console script is.

Why: a virtual environment's ``bin`` is not always on ``PATH`` (a container
that runs ``/app/.venv/bin/python``, a service manager's unit, Windows'
``py``), and ``python -m`` finds the command wherever the package is importable.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
