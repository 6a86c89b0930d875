"""The checker behind every lesson's --blank/--yours: the learner writes the gradients.

--blank prints the functions a learner writes (signature, docstring, a body that raises
NotImplementedError); --yours FILE imports them and checks each, smallest first, against the
lesson's own function and against central finite differences in float64, and says in one line
per function what is wrong and, where the error has a pattern, why.

    python 03_mlp_backward.py --blank > mine.py
    python 03_mlp_backward.py --yours mine.py
"""

import inspect
import math
import runpy
import traceback

import torch

from common import make_generator


def blank_header(lesson, given):
    """The top of a learner's file for lesson (its file name without .py): how to check it,
    then an import of each function in given, with its docstring's first line -> str.

    Needs: nothing
    """
    lines = [f'"""Your functions for {lesson}.py. Derive each on paper first, with',
             f"docs/{lesson}.md (each docstring names its steps); fill in its body; then check",
             f"them, smallest first, with: python {lesson}.py --yours mine.py", '"""',
             "import importlib", "", "import torch", ""]
    for fn in given:  # a lesson run as a script is __main__: name its file instead
        module = lesson if fn.__module__ == "__main__" else fn.__module__
        lines += [f"# given: {fn.__name__}: {fn.__doc__.splitlines()[0]}",
                  f'{fn.__name__} = importlib.import_module("{module}").{fn.__name__}']
    return "\n".join(lines) + "\n"


def blank_source(header, functions):
    """The file a learner fills in: header, then each function with its body left out -> str.

    Needs: inspect
    """
    parts = [header.rstrip() + "\n"]
    for fn in functions:
        parts.append(f'\n\ndef {fn.__name__}{inspect.signature(fn)}:\n    """{fn.__doc__}"""\n'
                     "    raise NotImplementedError  # your code here\n")
    return "".join(parts)


def add_your_turn(parser):
    """Every lesson's exercise flags: --blank and --yours FILE.

    Needs: nothing
    """
    parser.add_argument("--blank", action="store_true", help="print the functions you write")
    parser.add_argument("--yours", metavar="FILE", help="check your functions in FILE")


def your_turn(args, lesson, given, tasks, functions=None):
    """--blank prints the file to fill in, --yours FILE checks it -> exit status; else None.

    lesson and given as blank_header takes them; tasks(generator) -> [(name, reference,
    cases)]; the blank holds functions, by default the tasks' references.
    Needs: blank_header, blank_source, check_functions, load_yours, make_generator (common)
    """
    if args.blank:
        functions = functions or [t[1] for t in tasks(make_generator(0))]
        print(blank_source(blank_header(lesson, given), functions))
        return 0
    if not args.yours:
        return None
    print(f"checking {args.yours}: each function against the lesson's own, and each gradient "
          "against central differences (float64)")
    ok = check_functions(load_yours(args.yours), tasks(make_generator(args.seed)))
    print("all correct" if ok else "not yet: fix the first function that is not ok, then run "
          "this again")
    return 0 if ok else 1


def load_yours(path):
    """Run the learner's file -> its names and functions, a dict; a file that fails -> ValueError.

    Needs: runpy
    """
    try:
        return runpy.run_path(str(path), run_name="yours")
    except Exception as err:  # the learner's mistake, said in one line: no traceback to read
        raise ValueError(f"{path} does not run: {type(err).__name__}: {err}") from None


def central_differences(loss, at, k, eps):
    """d loss(*at) / d at[k], entry by entry: (L(x + eps) - L(x - eps)) / 2 eps -> like at[k].

    Needs: torch
    """
    grad = torch.zeros_like(at[k])
    for i in range(at[k].numel()):
        values = []
        for nudge in (eps, -eps):
            moved = at[k].clone()
            moved.view(-1)[i] += nudge
            values.append(float(loss(*at[:k], moved, *at[k + 1:])))
        grad.view(-1)[i] = (values[0] - values[1]) / (2 * eps)
    return grad


def relative_error(mine, truth):
    """max |mine - truth| / max(|truth|, 1e-3) over a tensor, inf where mine is not finite.

    Needs: math, torch
    """
    if not torch.isfinite(mine).all():
        return math.inf
    return ((mine - truth).abs().max() / truth.abs().max().clamp_min(1e-3)).item()


def diagnose(mine, want, B):
    """What a wrong output's error looks like, in words, or None when no pattern fits.

    Needs: torch
    """
    if mine.shape != want.shape:
        if mine.shape == want.shape[::-1]:
            return (f"its shape {tuple(mine.shape)} is the transpose of {tuple(want.shape)}: "
                    "a missing transpose")
        return f"its shape is {tuple(mine.shape)}, it should be {tuple(want.shape)}"
    if not torch.isfinite(mine).all():
        return "it holds inf or NaN: an exp that overflowed? (shift by the row's max first)"
    c = ((mine * want).sum() / (want * want).sum().clamp_min(1e-300)).item()  # mine ~ c want
    if (mine - c * want).abs().max() <= 1e-6 * want.abs().max():
        for value, words in ((B, f"B = {B} times too large: the mean's 1/B is missing"),
                             (1 / B, f"B = {B} times too small: divided by B twice"),
                             (-1, "the sign is flipped")):
            if abs(c - value) < 1e-6 * abs(value):
                return words
        if mine.numel() > 1:  # one number is always some multiple of another: no pattern
            return f"{c:.4g} times the right values"
    return None


def check_case(mine, reference, case, tolerance=1e-6):
    """One case of one function -> [(output name, status, relative error, hint)].

    case: "args" for the function; "names" of its outputs (flattened); "B" the batch size;
    "loss" and "at": the outputs are d loss(*at) / d at[k], so they must match both the
    reference and central differences (step "eps"); without "loss", the reference alone.
    Optional: "hint", (mine, want, args) -> words for a pattern one output's error leaves, and
    "rows_hint", (rows) -> words for a pattern across the outputs.
    Needs: central_differences, relative_error, diagnose, torch, traceback
    """
    def flat(out):
        return [t for o in out for t in flat(o)] if isinstance(out, (tuple, list)) else [out]

    def copied(obj):  # the learner's function gets copies: changing its inputs changes nothing
        return (type(obj)(copied(o) for o in obj) if isinstance(obj, (tuple, list)) else
                obj.clone() if isinstance(obj, torch.Tensor) else obj)
    try:
        got = flat(mine(*copied(case["args"])))
    except NotImplementedError:
        return [(case["names"][0], "not written yet", None, None)]
    except Exception as err:  # say where in the learner's file, and what
        where = " -> ".join(f"line {f.lineno} ({f.line})" for f in traceback.extract_tb(
            err.__traceback__) if f.filename == mine.__code__.co_filename)
        return [(case["names"][0], "wrong", None,
                 f"it raised {type(err).__name__}{' at ' + where if where else ''}: {err}")]
    want = flat(reference(*case["args"]))
    slopes = want  # without a loss, the reference is the truth; with one, so is its slope
    if "loss" in case:
        slopes = [central_differences(case["loss"], case["at"], k, case.get("eps", 1e-6))
                  for k in range(len(case["at"]))]
    if len(got) != len(want) or not all(isinstance(m, torch.Tensor) for m in got):
        return [(case["names"][0], "wrong", None, f"it returned {len(got)} values, not the "
                 f"{len(want)} tensors {', '.join(case['names'])}")]
    if [m.shape for m in got] != [w.shape for w in want] and sorted(
            map(tuple, (m.shape for m in got))) == sorted(map(tuple, (w.shape for w in want))):
        return [(case["names"][0], "wrong", None, "its outputs come in another order: return "
                 f"them as ({', '.join(case['names'])})")]
    rows = []
    for name, m, w, s in zip(case["names"], got, want, slopes):
        m = m.to(w.dtype)
        error = max(relative_error(m, w), relative_error(m, s)) if m.shape == w.shape else None
        ok, hint = error is not None and error < tolerance, None
        if not ok:
            hint = ((m.shape == w.shape and case.get("hint", lambda *a: None)(m, w, case["args"]))
                    or diagnose(m, w, case["B"]))
            hint = hint and (f"{name}: {hint}" if len(case["names"]) > 1 else hint)
        rows.append((name, "ok" if ok else "wrong", error, hint))
    if "rows_hint" in case:  # a pattern across the outputs, e.g. which layers are wrong
        rows = [(n, s, e, h or (s != "ok" and case["rows_hint"](rows)) or None)
                for n, s, e, h in rows]
    return rows


def check_functions(yours, tasks, hints=True, say=print):
    """Check each task's function from yours (a dict of names) -> True when all are ok.

    tasks: [(name, reference function, [cases])], smallest first; one line per function:
    ok, not written yet, or wrong with its largest relative error and (with hints) a hint.
    Needs: check_case, math, torch
    """
    all_ok, threads = True, torch.get_num_threads()
    for name, reference, cases in tasks:
        fallback = ("compare it with its derivation" if all_ok else
                    "it calls the functions above: fix those first")
        mine = yours.get(name)
        torch.set_num_threads(1)  # thousands of tiny tensors: threads would only wait on each other
        try:
            rows = ([(name, "missing", None, None)] if mine is None else
                    [row for case in cases for row in check_case(mine, reference, case)])
        finally:
            torch.set_num_threads(threads)
        bad = [r for r in rows if r[1] != "ok"]
        all_ok = all_ok and not bad
        if not bad:
            say(f"   {name:<34} ok")
        elif bad[0][1] in ("not written yet", "missing"):
            say(f"   {name:<34} {bad[0][1]}")
        else:
            measured = [r for r in bad if r[2] is not None]  # not those that raised
            worst = max([r[2] for r in measured], default=0)
            error = "not finite" if math.isinf(worst) else f"{worst:.2g}"
            parts = [f"{', '.join(dict.fromkeys(r[0] for r in measured))} (relative error "
                     f"{error})"] if measured else []
            parts += [next((r[3] for r in bad if r[3]), fallback)] if hints or not parts else []
            say(f"   {name:<34} WRONG  " + ": ".join(parts))
    return all_ok
