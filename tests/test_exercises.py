"""Lesson 03's exercises: every listed bug fails the gradient check; the clean pass does not."""

import pytest
from conftest import load_lesson

import common

bwd = load_lesson("03_mlp_backward")


def run(*args):
    return common.run_main(bwd.main, ["--device", "cpu", "--repeats", "2", *args])


def test_bug_list_names_at_least_six_bugs_one_line_each(capsys):
    assert run("--bug", "list") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(bwd.BUGS) >= 6
    assert [line.split()[0] for line in lines] == list(bwd.BUGS)


@pytest.mark.parametrize("name", list(bwd.BUGS))
def test_each_bug_fails_the_check_with_its_table_and_explanation(name, capsys):
    assert run("--bug", name) == 1
    out = capsys.readouterr().out
    assert f"exercise {name}: " in out and "FAIL" in out and "rel error" in out
    assert bwd.BUGS[name][2].split()[0] in out  # the explanation is printed
    assert out.strip().splitlines()[-1].startswith(f"result: bug={name} ")
    assert "caught=true" in out


@pytest.mark.parametrize("name", list(bwd.BUGS))
def test_each_bug_leaves_the_lessons_functions_untouched(name):
    import torch
    g = torch.Generator().manual_seed(0)
    rows = bwd.gradient_check([7, 6, 5, 4], g, torch.device("cpu"))
    assert all(problem is None and rel < 1e-6 for _, _, _, rel, problem in rows)
    bwd.gradient_check([7, 6, 5, 4], g, torch.device("cpu"), bwd.bug_backward(name))
    rows = bwd.gradient_check([7, 6, 5, 4], g, torch.device("cpu"))
    assert all(problem is None and rel < 1e-6 for _, _, _, rel, problem in rows)


def test_the_clean_backward_pass_passes(capsys):
    assert run() == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.strip().endswith("ok=true")
    assert "delta_1           100x512" in out and "dW_1              784x512" in out
    assert "delta_2           100x128" in out  # B = 100: never mistaken for the 128 units


def test_an_unknown_bug_is_one_sentence(capsys):
    assert run("--bug", "typo") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown bug 'typo'") and err.count("\n") == 1
