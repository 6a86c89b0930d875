"""The docs pages' "Check it yourself" snippets print what the pages say they print.

Each ```python block in docs/*.md (inside a quote, lines starting with "> ") is run in a
fresh namespace from the repository root, as a reader would paste it. A comment line of its own
after a print(...) line is that print's expected output; the printed lines must equal those
comments, in order, so a page cannot go stale when a function it calls changes.
"""

import contextlib
import io
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def snippets(text):
    """-> [(first line number, code lines, expected output lines)] of a page's python blocks."""
    found, code, start = [], None, 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw[2:] if raw.startswith("> ") else ("" if raw == ">" else raw)
        if code is None:
            if line.strip() == "```python":
                code, start = [], number + 1
        elif line.strip() == "```":
            expected, after_print = [], False
            for c in code:  # own-line comments right after a print are its output
                if c.startswith("# ") and after_print:
                    expected.append(c[2:])
                    continue
                after_print = c.lstrip().startswith("print(")
            found.append((start, code, expected))
            code = None
        else:
            code.append(line)
    return found


def all_snippets():
    return list(_all_snippets())


def _all_snippets():
    for page in sorted((ROOT / "docs").glob("*.md")):
        for start, code, expected in snippets(page.read_text()):
            yield pytest.param(code, expected, id=f"{page.name}:{start}")


def test_the_parser_reads_a_quoted_block_and_its_expected_lines():
    page = ("text\n> ```python\n> import math\n> print(1 + 1)\n> # 2\n"
            "> # comment? no: output\n> ```\n")
    assert snippets(page) == [(3, ["import math", "print(1 + 1)", "# 2",
                                   "# comment? no: output"], ["2", "comment? no: output"])]


def test_every_docs_page_with_a_worked_example_has_a_checked_snippet():
    ids = [p.id for p in all_snippets()]
    for page in ("01_logistic_regression.md", "02_mlp_forward.md", "03_mlp_backward.md",
                 "04_train_mnist.md"):
        assert any(i.startswith(page) for i in ids), page


@pytest.mark.parametrize("code, expected", all_snippets())
def test_a_docs_snippet_prints_what_its_page_says(code, expected, monkeypatch):
    assert expected, "a snippet with no expected output checks nothing"
    monkeypatch.chdir(ROOT)  # run from the repository root, as the pages say
    printed = io.StringIO()
    try:  # in this process, in a fresh namespace: as pasted, without a torch import each
        with contextlib.redirect_stdout(printed):
            exec(compile("\n".join(code), "<snippet>", "exec"), {"__name__": "__main__"})
    finally:
        torch.set_default_dtype(torch.float32)  # what a snippet may change for the next one
    assert printed.getvalue().splitlines() == expected
