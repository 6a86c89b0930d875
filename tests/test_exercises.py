"""Your turn: --blank writes what the learner fills in; --yours checks it; every bug is caught.

A blank file reports "not written yet" for each function; the lesson's own functions pasted
into it pass; each of lesson 03's bugs, pasted as the learner's, is reported wrong with the
hint its error shows.
"""

import ast
import inspect

import pytest
from conftest import load_lesson

LESSONS = {name: load_lesson(name) for name in ("01_logistic_regression", "03_mlp_backward",
                                                "04_train_mnist")}


def blank(name, capsys, tmp_path):
    assert LESSONS[name].main(["--blank"]) == 0
    path = tmp_path / "mine.py"
    path.write_text(capsys.readouterr().out)
    return path


def written_names(name):
    lesson = LESSONS[name]
    return [t[0] for t in lesson.your_turn_tasks(__import__("torch").Generator())]


@pytest.mark.parametrize("name", LESSONS)
def test_the_blank_holds_only_the_functions_to_write_each_not_written_yet(name, capsys, tmp_path):
    path = blank(name, capsys, tmp_path)
    tree = ast.parse(path.read_text())
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert all(isinstance(d.body[-1], ast.Raise) and len(d.body) == 2 for d in defs)  # doc, raise
    assert set(written_names(name)) <= {d.name for d in defs}
    assert LESSONS[name].main(["--yours", str(path)]) == 1
    out = capsys.readouterr().out
    for function in written_names(name):
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [function])
        assert line.split()[1:] == ["not", "written", "yet"], line


@pytest.mark.parametrize("name", LESSONS)
def test_the_lessons_own_functions_pasted_into_the_blank_pass(name, capsys, tmp_path):
    path = blank(name, capsys, tmp_path)
    lesson = LESSONS[name]
    tree = ast.parse(path.read_text())
    own = [inspect.getsource(getattr(lesson, d.name)) for d in tree.body
           if isinstance(d, ast.FunctionDef)]
    header = path.read_text().split("\n\ndef ")[0]
    path.write_text(header + "\n\n" + "\n\n".join(own))
    assert lesson.main(["--yours", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok\n") == len(written_names(name)) and "all correct" in out


HINTS = {"no-mean": "1/B is missing", "no-max-shift": "inf or NaN",
         "softmax-as-sigmoid": "must sum to 0", "transposed-dW": "missing transpose",
         "bias-first-row": "db sums delta over the batch", "no-relu-mask": "H = 0, the unit off",
         "mask-from-gradient": "must come from the forward pass"}


@pytest.mark.parametrize("bug", LESSONS["03_mlp_backward"].BUGS)
def test_each_bug_pasted_as_the_learners_is_wrong_with_its_hint(bug, capsys, tmp_path):
    lesson = LESSONS["03_mlp_backward"]
    path = tmp_path / "mine.py"
    path.write_text(lesson.source_with_bug(bug))
    assert lesson.main(["--yours", str(path)]) == 1
    target = lesson.BUGS[bug][1]
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith(target))
    assert "WRONG" in line and HINTS[bug] in line, line


def test_the_explanation_waits_for_explain(capsys):
    lesson = LESSONS["03_mlp_backward"]
    assert lesson.main(["--bug", "no-mean"]) == 1
    assert lesson.BUGS["no-mean"][2] not in capsys.readouterr().out
    assert lesson.main(["--bug", "no-mean", "--explain"]) == 1
    assert lesson.BUGS["no-mean"][2] in capsys.readouterr().out
    assert lesson.main(["--bug", "list"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(lesson.BUGS)


def test_a_file_that_does_not_run_is_one_sentence(capsys, tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("def relu_backward(dh, h)\n    return dh\n")
    with pytest.raises(ValueError, match="does not run: SyntaxError"):
        LESSONS["03_mlp_backward"].main(["--yours", str(path)])
