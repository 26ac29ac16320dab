"""The README's quick-start snippets are the example apps' own lines.

Each framework section of the README's "Quick start" shows a ``python`` block
whose first line names the file it comes from (``# examples/flask_app/app.py``).
The rest of the block, cut at lines that read ``# ...`` (lines left out), must
appear in that file: each piece as consecutive lines, exactly, and the pieces
in the README's order. The end-to-end tests (``test_examples_e2e.py``) then
prove that those files, served for real, report what they should: so the
README's instructions are proven too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The quick-start sections, and the example file each must quote.
SECTIONS = {
    "FastAPI / Starlette": ("examples/fastapi_app/app.py",),
    "Flask": ("examples/flask_app/app.py",),
    "Django": ("examples/django_site/settings.py", "examples/django_site/asgi.py"),
}
ELISION = "# ..."
_SOURCE = re.compile(r"#\s*(examples/\S+)$")


def section(text: str, title: str) -> str:
    """The body of the ``### title`` section (up to the next heading)."""
    match = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^#{{2,3}} )", text, re.M | re.S)
    assert match, f"README has no '### {title}' section"
    return match.group(1)


def python_blocks(markdown: str) -> list[list[str]]:
    return [
        block.splitlines() for block in re.findall(r"^```python\n(.*?)^```", markdown, re.M | re.S)
    ]


def pieces(lines: list[str]) -> list[list[str]]:
    """The block cut at ``# ...`` lines, blank lines at the edges of each piece dropped."""
    out: list[list[str]] = [[]]
    for line in lines:
        if line.strip() == ELISION:
            out.append([])
        else:
            out[-1].append(line)
    trimmed = []
    for piece in out:
        while piece and not piece[0].strip():
            piece.pop(0)
        while piece and not piece[-1].strip():
            piece.pop()
        if piece:
            trimmed.append(piece)
    return trimmed


def find_in_order(piece_list: list[list[str]], source: list[str]) -> list[int]:
    """Where each piece starts in ``source``, searching after the previous one;
    fails on the first piece that is not there, naming its first differing line."""
    starts = []
    position = 0
    for piece in piece_list:
        for start in range(position, len(source) - len(piece) + 1):
            if source[start : start + len(piece)] == piece:
                starts.append(start)
                position = start + len(piece)
                break
        else:
            missing = [line for line in piece if line not in source[position:]]
            raise AssertionError(
                "README lines not found, in this order and consecutively, in the example:\n"
                + "\n".join(piece)
                + ("\n-- first line missing from the file: " + missing[0] if missing else "")
            )
    return starts


@pytest.mark.parametrize("title", list(SECTIONS))
def test_quick_start_snippet_is_the_example_line_for_line(title: str) -> None:
    blocks = python_blocks(section(README.read_text(encoding="utf-8"), title))
    quoted = [block for block in blocks if block and _SOURCE.match(block[0].strip())]
    assert quoted, f"the '{title}' section shows no snippet naming its example file"
    for block in quoted:
        name = _SOURCE.match(block[0].strip()).group(1)  # type: ignore[union-attr]
        assert name in SECTIONS[title], f"'{title}' quotes {name}, expected {SECTIONS[title]}"
        source = (ROOT / name).read_text(encoding="utf-8").splitlines()
        piece_list = pieces(block[1:])
        assert sum(len(piece) for piece in piece_list) >= 5, "a snippet of substance"
        find_in_order(piece_list, source)


def test_the_checker_notices_a_changed_line() -> None:
    source = ["a = 1", "b = 2", "c = 3"]
    assert find_in_order(pieces(["a = 1", ELISION, "c = 3"]), source) == [0, 2]
    with pytest.raises(AssertionError, match="b = 3"):
        find_in_order(pieces(["a = 1", "b = 3"]), source)
    with pytest.raises(AssertionError):  # consecutive lines must be consecutive
        find_in_order(pieces(["a = 1", "c = 3"]), source)
    with pytest.raises(AssertionError):  # and in order
        find_in_order(pieces(["c = 3", ELISION, "a = 1"]), source)


def test_every_example_has_a_readme_with_how_to_run_and_opt_out() -> None:
    for directory in ("fastapi_app", "flask_app", "django_site"):
        text = (ROOT / "examples" / directory / "README.md").read_text(encoding="utf-8")
        for needed in ("TELEMETRY_ENDPOINT", "SQA_OPT_OUT", "/healthz"):
            assert needed in text, (directory, needed)


def test_each_examples_run_it_block_puts_the_venvs_commands_on_path() -> None:
    # After `make demo` on a fresh clone, the block's first line,
    # `reqtelemetry collector ...`, said "bash: reqtelemetry: command not found"
    # (and `flask --app ...` found another environment's flask, without
    # reqtelemetry): nothing in the block put .venv/bin on PATH.
    for directory in ("fastapi_app", "flask_app", "django_site"):
        text = (ROOT / "examples" / directory / "README.md").read_text(encoding="utf-8")
        run_it = text.split("## Run it", 1)[1]
        block = re.search(r"```sh\n(.*?)```", run_it, re.S)
        assert block, directory
        commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
        commands = [command for command in commands if command]
        assert commands[0] in (". .venv/bin/activate", "source .venv/bin/activate"), (
            directory,
            commands[0],
        )


# -- the collector's and the operator's instructions ---------------------------------------


def _collector_section() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(
        r"^## For maintainers: running the collector\n(.*?)(?=^## )", text, re.M | re.S
    )
    assert match
    return match.group(1)


def test_the_production_collector_gets_one_stored_secret_not_one_per_replica() -> None:
    # A secret generated inline on the collector's command line differs on every
    # replica and every restart: tokens would stop verifying.
    shell = "\n".join(re.findall(r"^```sh\n(.*?)^```", _collector_section(), re.M | re.S))
    commands = [line for line in shell.splitlines() if "reqtelemetry collector" in line]
    assert any("--production" in line for line in commands)
    for line in commands:
        assert "$(" not in line and "SECRET=" not in line, line
    assert "same values to every" in " ".join(_collector_section().split())
    # No placeholder a production collector would now refuse.
    assert "DASHBOARD_TOKEN=..." not in shell


def test_the_readme_says_where_the_opt_out_flag_works() -> None:
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "add_opt_out_argument" in text
    assert "uvicorn, gunicorn and `flask run` refuse options they do not know" in text


def test_the_docs_point_only_inside_the_repository() -> None:
    for document in (README, *sorted((ROOT / "docs").glob("*.md"))):
        for target in re.findall(r"[`(](\.\./[^`)\s]+)[`)]", document.read_text(encoding="utf-8")):
            resolved = (document.parent / target.split("#", 1)[0]).resolve()
            assert resolved.is_relative_to(ROOT), f"{document.name} cites {target}"
            assert resolved.exists(), f"{document.name} cites {target}, which does not exist"
