"""``python tests/uvicorn_script.py MODE PORT``: the FastAPI example run as many
FastAPI apps are, by a script that calls ``uvicorn.run`` (``MODE``: ``reload``
or ``workers``, two of them).

The script imports the app, so its ``Telemetry`` is made in this process too,
which then only supervises: uvicorn's reloader or its worker manager starts
the processes that serve as new programs (``multiprocessing``'s spawn), and
each imports the app and is an instance of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the examples; spawned children inherit the path

import uvicorn  # noqa: E402

from examples.fastapi_app.app import app  # noqa: E402, F401  (the parent's Telemetry)

TARGET = "examples.fastapi_app.app:app"

if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "reload":
        # Watching only the example: the whole repository is thousands of files.
        reload_dir = str(ROOT / "examples" / "fastapi_app")
        uvicorn.run(TARGET, host="127.0.0.1", port=port, reload=True, reload_dirs=[reload_dir])
    else:
        uvicorn.run(TARGET, host="127.0.0.1", port=port, workers=2)
