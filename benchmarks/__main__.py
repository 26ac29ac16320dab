"""Run the benchmarks, print them and save them.

``python -m benchmarks [--quick] [--cpu-clock] [module ...]``

Every module named in :data:`benchmarks.MODULES` (or only those given on the
command line) is imported and its ``run()`` called; the markdown sections it
returns are printed as they arrive and written together, under a header naming
the date, machine and versions, to ``benchmarks/results/latest.md`` (a run of
named modules only: ``latest-<names>.md``; a ``--quick`` run:
``latest-quick.md`` or ``latest-quick-<names>.md``; neither ever replaces the
full run's tables). The total at the end is the process's whole wall time,
from its start: interpreter start-up and imports included, the virtual
environment's creation and the peers' install (``make bench``'s one-time
set-up) not.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

import psutil

from . import EXTRA_MODULES, MODULES, load_average, quick
from .contenders import PEER_DISTRIBUTIONS

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"
#: Printed in the header. uvloop and httptools are what uvicorn runs on in the
#: throughput benchmarks (pinned in the ``bench`` extra); starlette, flask and
#: werkzeug are the measured apps (not pinned: whatever the extras resolved).
VERSIONED = (
    "reqtelemetry",
    "starlette",
    "flask",
    "werkzeug",
    "uvicorn",
    "uvloop",
    "httptools",
    "gunicorn",
)


def results_path(named: list[str], quick_run: bool = False) -> Path:
    """Where a run's tables go: ``latest.md`` for the full default run, else a file of its own.

    Why: a run of some modules (``make bench ARGS=profile``) or a quick smoke
    run (``ARGS=--quick``, rough numbers) must not replace the tables of the
    last full run, which the README's figures come from.
    """
    parts = (["quick"] if quick_run else []) + named
    if not parts:
        return RESULTS
    return RESULTS.with_name(f"latest-{'-'.join(parts)}.md")


def process_seconds() -> float:
    """Wall time since this process started: interpreter start-up and imports included.

    Why not from the first module: the budget is on ``make bench`` as a whole,
    and start-up and imports (the peers' packages among them) are part of it.
    """
    return time.time() - psutil.Process().create_time()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def python_build() -> str:
    """Where the interpreter lives and the optimisation flags it was configured with.

    Why: how CPython was compiled moves every absolute figure (a build without
    profile-guided optimisation, pyenv's default, runs Python code markedly
    slower), while the ratios, taken on one interpreter, compare like with
    like. Only what ``configure`` recorded is shown: some distributions
    optimise through their own build rules, which leave no trace here.
    """
    configured = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    flags = [
        flag
        for flag in ("--enable-optimizations", "--with-lto", "--enable-shared")
        if flag in configured
    ]
    return f"{sys.base_prefix}; configure flags of note: {', '.join(flags) or 'none'}"


def header() -> str:
    """Where and with what the numbers were taken."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    versions = ", ".join(f"{name} {_version(name)}" for name in VERSIONED)
    peers = ", ".join(f"{name} {_version(name)}" for name in PEER_DISTRIBUTIONS)
    lines = [
        "# reqtelemetry benchmarks",
        "",
        f"- date: {now}",
        f"- machine: {platform.platform()}",
        f"- CPU count: {os.cpu_count()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()} "
        f"({python_build()})",
        f"- versions: {versions}",
        f"- peers (`pip install -e '.[bench]'`): {peers}",
        f"- load average (1/5/15 min) at start: {load_average()}",
        f"- mode: {'quick (smoke test, rough numbers)' if quick() else 'full'}",
        "",
        "Regenerate with `make bench` (`python -m benchmarks`).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="short, rough run (same as BENCH_QUICK=1)"
    )
    parser.add_argument(
        "--cpu-clock",
        action="store_true",
        help="time with the thread's CPU clock, not the wall clock (same as BENCH_CLOCK=thread); "
        "steadier on a busy machine",
    )
    parser.add_argument(
        "modules",
        nargs="*",
        metavar="module",
        help=f"run only these (of: {', '.join(MODULES)}; not run by default: "
        f"{', '.join(EXTRA_MODULES)})",
    )
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["BENCH_QUICK"] = "1"
    if args.cpu_clock:
        os.environ["BENCH_CLOCK"] = "thread"
    unknown = [name for name in args.modules if name not in MODULES + EXTRA_MODULES]
    if unknown:
        parser.error(f"unknown benchmark module(s): {', '.join(unknown)}")
    names = args.modules or list(MODULES)

    sections = [header()]
    print(sections[0], end="\n\n", flush=True)
    for name in names:
        module = importlib.import_module(f"{__package__}.{name}")
        started = time.perf_counter()
        section = module.run().strip()
        elapsed = time.perf_counter() - started
        section += f"\n\n_{name}: {elapsed:.1f} s_"
        sections.append(section)
        print(section, end="\n\n", flush=True)

    total = (
        f"_total: {process_seconds():.0f} s for {', '.join(names)} (the process's wall time "
        "from its start: interpreter start-up and imports included; the venv and the "
        "bench extra's install, a one-time set-up, not)_"
    )
    sections.append(total)
    print(total, end="\n\n", flush=True)

    written = results_path(args.modules, quick())
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    try:
        shown = written.relative_to(Path.cwd())
    except ValueError:
        shown = written
    print(f"written to {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
