"""The in-server instruction count runs (quick counts) and sees the middleware's work.

No number is judged; what is checked is that the method measures something
real: the server with reqtelemetry executes more instructions per request than
the bare one, by about what the middleware costs in process (the same code),
not by a multiple of it.
"""

from __future__ import annotations

import shutil

import pytest

from benchmarks import server_instructions, throughput

VALGRIND = shutil.which("valgrind")


@pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed")
@pytest.mark.timeout(240)
def test_the_server_with_reqtelemetry_executes_the_middlewares_instructions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    assert VALGRIND is not None
    found = server_instructions.per_request(VALGRIND, server_instructions.counts())
    added = found["reqtelemetry"] - found["bare"]
    assert 5_000 < added < 60_000, found
    assert found["bare"] > 50_000, found  # a whole uvicorn request, not a loop's


def test_without_valgrind_the_section_says_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_instructions.shutil, "which", lambda name: None)
    report = server_instructions.run()
    assert report.startswith("## Instructions per request inside uvicorn")
    assert "skipped: `valgrind` is not installed" in report


def test_every_counted_server_gets_an_environment_of_one_size_and_reads_its_contender(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment's size moves the interpreter's layout, so the names are padded."""
    environments = {
        contender: server_instructions.server_environment(contender)
        for contender in server_instructions.CONTENDERS
    }
    sizes = {sum(len(k) + len(v) for k, v in env.items()) for env in environments.values()}
    assert len(sizes) == 1, environments
    for contender, env in environments.items():
        monkeypatch.setenv(throughput.CONTENDER_ENV, env[throughput.CONTENDER_ENV])
        assert throughput._contender() == contender
