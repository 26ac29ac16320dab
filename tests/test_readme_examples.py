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
