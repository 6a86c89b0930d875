"""The copy-out contract: a function pasted alone, with what its Needs: line names, runs.

Each public function's `Needs:` line must name exactly the globals its body uses, each with
the file that defines it: a bare name for the same file, "(01)" to "(04)" for a lesson,
"(common)" or "(exercises)" for those files; anything else is a module or name to import, as
the file imports it. The function, pasted with everything its needs need in turn, must define
and resolve every name in a fresh namespace. examples/spirals.py pastes 17 of them unchanged
and trains.
"""

import ast
import builtins
import dis
import importlib
import inspect
import re
import runpy
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = {"01": "01_logistic_regression", "02": "02_mlp_forward", "03": "03_mlp_backward",
         "04": "04_train_mnist", "common": "common", "exercises": "exercises"}
MODULES = {tag: importlib.import_module(name) for tag, name in FILES.items()}


def globals_used(code):
    """Every global name a code object (and the functions and classes inside it) loads."""
    names = {i.argval for i in dis.get_instructions(code)
             if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= globals_used(const)
    return names - set(dir(builtins)) - {"__file__"}


def defaults_used(fn):
    """Global names in the def line's default values (evaluated where the function is pasted)."""
    node = ast.parse(inspect.getsource(fn)).body[0]
    return {n.id for d in node.args.defaults + node.args.kw_defaults if d is not None
            for n in ast.walk(d) if isinstance(n, ast.Name)} - set(dir(builtins))


def needs(fn):
    """The Needs: line -> {name: tag or None}."""
    match = re.search(r"Needs:(.*?)(\"\"\"|\n\s*\n|$)", fn.__doc__ or "", re.S)
    assert match, f"{fn.__name__} has no Needs: line"
    found = {}
    for item in " ".join(match.group(1).split()).split(","):
        item = item.strip().rstrip(".")
        if item and item != "nothing":
            name, _, tag = item.partition(" (")
            found[name] = tag.rstrip(")") or None
    return found


def top_level(module):
    """{name: source} for every import, constant, function and class of a module's file."""
    tree = ast.parse(Path(module.__file__).read_text())
    text = Path(module.__file__).read_text()
    found = {}
    for node in tree.body:
        segment = ast.get_source_segment(text, node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                line = (f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                        if isinstance(node, ast.Import) else
                        f"from {node.module} import {alias.name}"
                        + (f" as {alias.asname}" if alias.asname else ""))
                found[bound] = line
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = segment
        elif isinstance(node, ast.Assign):  # NAME = ... or A, B = ... (not NAME[key] = ...)
            for target in node.targets:
                for name in getattr(target, "elts", [target]):
                    if isinstance(name, ast.Name):
                        found[name.id] = segment
    return found


SOURCES = {tag: top_level(module) for tag, module in MODULES.items()}


def functions():
    for tag, module in MODULES.items():
        for name, fn in vars(module).items():
            if inspect.isfunction(fn) and fn.__module__ == module.__name__:
                yield pytest.param(tag, fn, id=f"{FILES[tag]}.{name}")


def paste(tag, name, done):
    """The lines to paste for name of file tag and, recursively, everything it needs."""
    obj = getattr(MODULES[tag], name)
    if inspect.isfunction(obj) and obj.__module__ != MODULES[tag].__name__:  # another file's
        tag = next(t for t, m in MODULES.items() if m.__name__ == obj.__module__)
    if (tag, name) in done:
        return []
    done.add((tag, name))
    source = SOURCES[tag][name]
    if inspect.isfunction(obj):
        deps = needs(obj)
    elif source.startswith(("import", "from")):
        deps = {}
    else:  # a constant or a class: the names of this file that its text uses
        deps = {n: None for n in re.findall(r"\b[A-Za-z_]\w*\b", source)
                if n in SOURCES[tag] and n != name}
    lines = []
    for dep, dep_tag in deps.items():
        lines += paste(dep_tag or tag, dep, done)
    return lines + [source]


@pytest.mark.parametrize("tag, fn", list(functions()))
def test_needs_names_what_the_body_uses_and_pasted_alone_it_resolves(tag, fn):
    declared = needs(fn)
    used = globals_used(fn.__code__) | defaults_used(fn)
    assert set(declared) == used, f"Needs: says {sorted(declared)}, the body uses {sorted(used)}"
    for name, where in declared.items():  # the tag names the file that defines it
        obj = getattr(MODULES[tag], name)
        if where is not None and where != tag:
            assert obj is getattr(MODULES[where], name), f"{name} is not ({where})'s"
    namespace = {"__name__": "pasted"}
    exec("\n\n".join(paste(tag, fn.__name__, set())), namespace)
    pasted = namespace[fn.__name__]
    assert globals_used(pasted.__code__) <= set(namespace), "a name stays undefined"


def test_the_example_pastes_its_functions_unchanged_and_learns_the_spirals(capsys):
    path = ROOT / "examples" / "spirals.py"
    tree = ast.parse(path.read_text())
    pasted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name != "spirals"]
    for node in pasted:
        owners = [tag for tag in FILES if SOURCES[tag].get(node.name, "").startswith("def ")]
        assert owners, node.name
        assert ast.get_source_segment(path.read_text(), node) == SOURCES[owners[0]][node.name]
    assert len(pasted) >= 15
    runpy.run_path(str(path), run_name="__main__")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert float(re.search(r"accuracy ([\d.]+)", last).group(1)) > 0.95, last
