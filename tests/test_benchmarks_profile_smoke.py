"""The py-spy profile reads real stacks and charges samples to the right code.

No number is judged. What is checked: the parser keeps reqtelemetry's lines
apart from everything else and leaves import-time and out-of-loop samples out;
a real (quick) profile of the ASGI loop finds the middleware's functions, in a
share that is neither nothing nor everything; without py-spy the section says
it was skipped; and a run of it by name leaves the full run's tables alone.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as runner
from benchmarks import profile

PY_SPY = profile.find_py_spy()
OURS = f"{profile.PACKAGE_DIR}integrations/asgi.py"


def test_summarise_charges_the_innermost_frame_and_filters_stacks() -> None:
    loop = "_asgi_loop (/x/benchmarks/overhead.py:214)"
    raw = "\n".join(
        [
            f"run (/x/asyncio/base_events.py:9);{loop};__call__ ({OURS}:84) 30",
            f"{loop};__call__ ({OURS}:84);app (/x/starlette/routing.py:70) 50",
            f"{loop};send ({OURS}:231) 15",
            f"<module> (/x/m.py:1);_find_and_load (<frozen importlib._bootstrap>:1);"
            f"<module> ({OURS}:1) 400",
            f"serve (/x/benchmarks/profile.py:9);__call__ ({OURS}:84) 70",
            "not a stack line",
        ]
    )
    found = profile.summarise("t", raw, must_contain="_asgi_loop (")
    assert found.samples == 95  # import-time and out-of-loop stacks left out
    assert found.ours == 45  # the starlette leaf is the framework's
    assert found.lines[(OURS, 84, "__call__")] == 30
    assert found.functions == {"__call__": 30, "send": 15}
    assert found.share == pytest.approx(45 / 95)
    everything = profile.summarise("t", raw)
    assert everything.samples == 95 + 70


def test_parse_frame_reads_names_with_spaces_and_paths_with_colons() -> None:
    assert profile.parse_frame("<lambda> (/a:b/c.py:12)") == ("<lambda>", "/a:b/c.py", 12)
    assert profile.parse_frame("f (x.py)") == ("f", "x.py", 0)


def qualified(name: str) -> str:
    """``name`` as py-spy reports it: code objects carry a qualified name from Python 3.11 on."""
    return name if sys.version_info >= (3, 11) else name.rsplit(".", 1)[-1]


@pytest.mark.skipif(PY_SPY is None, reason="py-spy is not installed")
@pytest.mark.timeout(120)
def test_a_real_profile_of_the_asgi_loop_finds_the_middleware() -> None:
    assert PY_SPY is not None
    found = profile.profile_loop(PY_SPY, "asgi", profile.QUICK)
    assert found.samples > 300, found
    assert 0.02 < found.share < 0.6, found
    assert qualified("ASGIMiddleware.__call__") in found.functions, found.functions
    assert qualified("_Exchange.send") in found.functions, found.functions
    section = "\n".join(profile.profile_section(found))
    assert "reqtelemetry/integrations/asgi.py:" in section


@pytest.mark.skipif(PY_SPY is None, reason="py-spy is not installed")
@pytest.mark.timeout(60)
def test_a_loop_that_never_runs_is_an_error_not_an_empty_profile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert PY_SPY is not None
    monkeypatch.setattr(profile.sys, "executable", shutil.which("false") or "/bin/false")
    with pytest.raises(RuntimeError, match="py-spy wrote no profile"):
        profile.profile_loop(PY_SPY, "asgi", profile.QUICK)


@pytest.mark.skipif(PY_SPY is None, reason="py-spy is not installed")
@pytest.mark.timeout(60)
def test_a_loop_that_fails_is_an_error_although_py_spy_exits_0() -> None:
    assert PY_SPY is not None
    with pytest.raises(RuntimeError, match="did not finish"):
        profile.profile_loop(PY_SPY, "bogus", profile.QUICK)  # the child raises ValueError


def test_without_py_spy_the_section_says_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile.shutil, "which", lambda name, path=None: None)
    report = profile.run()
    assert report.startswith("## Where the time goes (py-spy)")
    assert "skipped: `py-spy` is not installed" in report


def test_a_named_run_writes_its_own_file_and_keeps_the_full_tables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = tmp_path / "latest.md"
    full.write_text("the full run's tables\n", encoding="utf-8")
    monkeypatch.setattr(runner, "RESULTS", full)
    monkeypatch.setenv("BENCH_QUICK", "1")  # main() sets it for --quick: restored after
    monkeypatch.setattr(profile.shutil, "which", lambda name, path=None: None)  # fast: skipped
    assert runner.main(["--quick", "profile"]) == 0
    assert full.read_text(encoding="utf-8") == "the full run's tables\n"
    # A quick run's rough numbers go to a file of their own, named so.
    assert not (tmp_path / "latest-profile.md").exists()
    written = (tmp_path / "latest-quick-profile.md").read_text(encoding="utf-8")
    assert written.startswith("# reqtelemetry benchmarks")
    assert "## Where the time goes (py-spy)" in written
    assert "uvloop " in written and "httptools " in written  # the versions line
    assert "_total: " in written and "the process's wall time from its start" in written
    assert "written to" in capsys.readouterr().out


def test_only_a_full_run_of_every_module_writes_latest_md() -> None:
    results = runner.RESULTS
    assert runner.results_path([]) == results
    assert runner.results_path([], quick_run=True) == results.with_name("latest-quick.md")
    assert runner.results_path(["overhead", "memory"]) == results.with_name(
        "latest-overhead-memory.md"
    )
    assert runner.results_path(["memory"], quick_run=True) == results.with_name(
        "latest-quick-memory.md"
    )
