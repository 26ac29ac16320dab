"""The instruction-count benchmark runs (quick counts) and tells the rows apart.

No number is judged against a budget here; what is checked is that the method
measures something real: the enabled middleware executes more instructions
per request than the bare app, and the opted-out one far fewer than that.
"""

from __future__ import annotations

import shutil

import pytest

from benchmarks import instructions

VALGRIND = shutil.which("valgrind")


@pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed")
@pytest.mark.timeout(180)
def test_enabled_costs_instructions_and_opted_out_almost_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    bare, enabled, opted_out = list(instructions.VARIANTS)[:3]
    assert VALGRIND is not None
    found = instructions.per_request(VALGRIND, [bare, enabled, opted_out], instructions.counts())
    added = found[enabled] - found[bare]
    assert added > 1_000, found
    assert abs(found[opted_out] - found[bare]) < added / 5, found


def test_without_valgrind_the_section_says_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    report = instructions.run()
    assert report.startswith("## Instructions per request")
    assert "skipped: `valgrind` is not installed" in report
