"""The copy-out promise: any public function can be pasted into another project on its own.

Every public function (a module-level `def` whose name does not start with `_`) of the four
lessons and of common.py says in its docstring, on one `Needs:` line, what else to paste:

    Needs: softmax (02), linear_backward, torch

- a function of the same file: its bare name (`linear_backward`);
- a function of another file: its name and that file's tag: (01), (02), (03), (04), (common);
  lessons borrow such functions by name at module level (`softmax = forward.softmax`), and the
  tag names the file that really defines the function, not the one that borrows it;
- a module the file imports at its top: the module's name (`torch`, `math`; `pathlib` for a
  body that uses `Path` after `from pathlib import Path`) or the name the file binds it to
  (`F` for `import torch.nn.functional as F`); a module-level constant or a private helper of
  the same file: bare (`N_INPUT`, `_interval`), and with a constant, whatever its value refers
  to (`STEPS` holds three step functions: a function using it lists them too);
- `Needs: nothing` when the body refers to no such name. Builtins are never listed, and a module
  used only through a tensor's methods (`h.T @ dz`) is not referred to, so it is not listed;
  neither is a module the body imports itself (the pasted source carries that import).
`Needs:` starts a line of the docstring or ends a one-line docstring; a trailing comma
continues it on the next line. A user follows the line transitively: paste the function,
then everything its needs need, and so on.

Three checks hold the promise:

1. test_needs_line_matches_the_body (one case per function, id "tag:name"): the declared
   names equal the global names the body really refers to (found with symtable: names that are
   not parameters, locals, comprehension variables, nested functions or builtins; decorators and
   default values count too). A body that reaches through a module alias (`forward.softmax`,
   `common.accuracy`) fails: a pasted copy has no such module. Borrow the function by name.
2. test_copied_function_gives_the_same_result (one case per function): a fresh namespace gets
   the declared modules' import lines and the source of the function and of its declared needs,
   followed transitively, and nothing else (importing `common`, `importlib` or a lesson is
   refused in it). The copy is called on the example inputs of EXAMPLES and must give exactly
   what the original gives, and leave in-place-modified arguments (and generators) exactly as
   the original leaves them. A public function with no example and no SKIP entry fails: the
   coverage cannot shrink silently.
3. test_readme_copy_example_runs: README's section "## Copying a function" holds one python
   block of pasted lesson functions (each `def` identical to the lesson's current source) and a
   short training loop; it runs in a fresh interpreter in an empty folder and must print an
   accuracy above the threshold the block states.
"""

import argparse
import ast
import builtins
import importlib
import inspect
import io
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import symtable
import sys
from functools import cache

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = {  # tag -> file; the tag is what a Needs line writes in brackets
    "01": "01_logistic_regression.py",
    "02": "02_mlp_forward.py",
    "03": "03_mlp_backward.py",
    "04": "04_train_mnist.py",
    "common": "common.py",
}
TAG_OF_MODULE = {name.removesuffix(".py"): tag for tag, name in FILES.items()}
TAGS = "(01), (02), (03), (04) or (common)"
MODULE_DUNDERS = {"__file__", "__name__", "__doc__", "__spec__", "__loader__", "__package__",
                  "__builtins__", "__cached__", "__annotations__"}  # every module has them
BUILTIN_NAMES = set(dir(builtins)) | MODULE_DUNDERS
NEEDS_ITEM = re.compile(r"([A-Za-z_]\w*)(?:\s*\((.*)\))?")


# ----------------------------------------------------------------------------- reading a file

@cache
def source(tag):
    """-> (text, tree) of one file; tree is None if the file does not parse right now."""
    text = (ROOT / FILES[tag]).read_text()
    try:
        return text, ast.parse(text)
    except SyntaxError:
        return text, None


def top_level(statements):
    """Module-level statements, looking inside if/try/with blocks (not `if __name__ == ...`)."""
    for stmt in statements:
        if isinstance(stmt, ast.If) and "__name__" in ast.unparse(stmt.test):
            continue
        if isinstance(stmt, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "handlers", "finalbody"):
                yield from top_level(getattr(stmt, block, []))
        elif isinstance(stmt, ast.ExceptHandler):
            yield from top_level(stmt.body)
        else:
            yield stmt


def lesson_import(value):
    """The tag of `importlib.import_module("02_mlp_forward")`, else None."""
    if (isinstance(value, ast.Call) and ast.unparse(value.func) == "importlib.import_module"
            and value.args and isinstance(value.args[0], ast.Constant)):
        return TAG_OF_MODULE.get(value.args[0].value)
    return None


@cache
def bindings(tag):
    """What each module-level name of a file is -> {name: (kind, detail, statement)}.

    kind is "def" (a function or class defined here), "constant", "module" (detail: the
    module's name and the import line that binds the name), "alias" (a lesson module or
    common; detail: its tag) or "borrowed" (a function taken from another file by name;
    detail: (its tag, its name)).
    """
    out = {}
    for stmt in top_level(source(tag)[1].body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[stmt.name] = ("def", None, stmt)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                bound = alias.asname or alias.name.split(".")[0]
                if isinstance(stmt, ast.Import) and alias.name in TAG_OF_MODULE:
                    out[bound] = ("alias", TAG_OF_MODULE[alias.name], stmt)
                elif isinstance(stmt, ast.ImportFrom) and stmt.module in TAG_OF_MODULE:
                    out[bound] = ("borrowed", (TAG_OF_MODULE[stmt.module], alias.name), stmt)
                else:  # declared by the module's name: `Path` comes from `pathlib`
                    module = alias.name if isinstance(stmt, ast.Import) else stmt.module
                    line = ast.unparse(type(stmt)(**{**vars(stmt), "names": [alias]}))
                    out[bound] = ("module", (module, line), stmt)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                pairs = [(target, stmt.value)]
                if (isinstance(target, ast.Tuple) and isinstance(stmt.value, ast.Tuple)
                        and len(target.elts) == len(stmt.value.elts)):
                    pairs = list(zip(target.elts, stmt.value.elts))
                for name_node, value in pairs:
                    for name in [n.id for n in ast.walk(name_node) if isinstance(n, ast.Name)]:
                        out[name] = classify_assignment(out, value, stmt)
    return out


def classify_assignment(known, value, stmt):
    if lesson_import(value):
        return ("alias", lesson_import(value), stmt)
    if (isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)
            and known.get(value.value.id, ("",))[0] == "alias"):
        return ("borrowed", (known[value.value.id][1], value.attr), stmt)
    return ("constant", None, stmt)


def public_functions(tag):
    """{name: node} of the module-level functions not starting with `_`, in file order."""
    if source(tag)[1] is None:
        return {}
    return {name: node for name, (kind, _, node) in bindings(tag).items()
            if kind == "def" and not name.startswith("_")
            and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def segment(tag, node):
    """The source lines of a statement (a def with its decorators), as inspect.getsource has it."""
    lines = source(tag)[0].splitlines(keepends=True)
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "".join(lines[start - 1:node.end_lineno])


def defined_in(tag, name):
    """Follow borrowings to the file that really defines `name` -> (tag, name), or None."""
    for _ in range(len(FILES) + 1):
        if source(tag)[1] is None:
            return None
        kind, detail, _ = bindings(tag).get(name, (None, None, None))
        if kind == "def":
            return tag, name
        if kind != "borrowed":
            return None
        tag, name = detail
    return None


# ----------------------------------------------------------------------------- what a body uses

@cache
def tables(tag):
    return symtable.symtable(source(tag)[0], FILES[tag], "exec").get_children()


def referenced_globals(tag, node):
    """Global names a def/class (or a constant's statement) refers to, in order of first use.

    symtable gives the names the body and its nested scopes resolve at module level; the
    decorators, default values, annotations and base classes are evaluated where the def
    stands, so they are read from the syntax tree.
    """
    found = set()
    outside = list(getattr(node, "decorator_list", []))
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        matches = [t for t in tables(tag) if t.get_name() == node.name]
        table = next((t for t in matches if t.get_lineno() == node.lineno), matches[-1])
        stack = [table]
        while stack:
            t = stack.pop()
            found |= {s.get_name() for s in t.get_symbols() if s.is_global()}
            stack += t.get_children()
        if isinstance(node, ast.ClassDef):
            outside += node.bases + [k.value for k in node.keywords]
        else:
            a = node.args
            outside += a.defaults + [d for d in a.kw_defaults if d is not None]
            outside += [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs
                        + [a.vararg, a.kwarg] if x is not None and x.annotation is not None]
            outside += [node.returns] if node.returns else []
    else:  # a constant: the names its value loads (minus comprehension and lambda variables)
        outside = [node.value] if getattr(node, "value", None) is not None else []
    for expr in outside:
        local = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)
                 and isinstance(n.ctx, ast.Store)}
        local |= {a.arg for n in ast.walk(expr) if isinstance(n, ast.Lambda)
                  for a in n.args.args + n.args.kwonlyargs + n.args.posonlyargs}
        found |= {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)
                  and isinstance(n.ctx, ast.Load) and n.id not in local}
    module_names = bindings(tag)
    found = {n for n in found if n in module_names or n not in BUILTIN_NAMES}
    first_use = {}
    for n in sorted((n for n in ast.walk(node) if isinstance(n, ast.Name)),
                    key=lambda n: (n.lineno, n.col_offset)):
        first_use.setdefault(n.id, len(first_use))
    return sorted(found, key=lambda n: first_use.get(n, len(first_use)))


def alias_uses(tag, node):
    """`forward.softmax`, `common.accuracy`, ...: each reach into a lesson module or common."""
    aliases = {n for n, (kind, _, _) in bindings(tag).items() if kind == "alias"}
    uses = []
    for n in ast.walk(node):
        if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                and n.value.id in aliases):
            uses.append((n.lineno, n.value.id, n.attr))
    return list(dict.fromkeys((alias, attr) for _, alias, attr in sorted(uses)))


def expected_needs(tag, node, _seen=None):
    """What the Needs line must say -> ({name: tag or None}, [problems no Needs line can fix]).

    A constant has no Needs line of its own, so what its value refers to (`STEPS` holds three
    step functions) must be on the line of every function that uses it.
    """
    expected, problems = {}, []
    module_names = bindings(tag)
    seen = set() if _seen is None else _seen
    for name in referenced_globals(tag, node):
        kind, detail, stmt = module_names.get(name, (None, None, None))
        if name == getattr(node, "name", None):
            continue  # recursion: the function is pasted anyway
        if kind == "constant" and name not in seen:
            seen.add(name)
            inner, inner_problems = expected_needs(tag, stmt, seen)
            expected.update((k, v) for k, v in inner.items() if k != getattr(node, "name", None))
            problems += inner_problems
        if kind in ("def", "constant"):
            expected[name] = None
        elif kind == "module":
            expected[detail[0]] = None
        elif kind == "borrowed":
            origin = defined_in(*detail)
            if origin is None:
                problems.append(f"`{name}` is borrowed from ({detail[0]}), which defines no "
                                f"function `{detail[1]}`")
            elif origin[1] != name:
                problems.append(f"`{name}` is {origin[1]} ({origin[0]}) under another name: "
                                f"borrow it as `{origin[1]}` so a pasted copy finds it")
            else:
                expected[name] = origin[0]
        elif kind == "alias":
            for alias, attr in alias_uses(tag, node) or [(name, None)]:
                if alias != name:
                    continue
                origin = defined_in(detail, attr) if attr else None
                if origin is None:
                    problems.append(f"refers to the module `{name}`: a pasted copy has no "
                                    "such module; take what it needs by name at module level")
                    continue
                borrowed = module_names.get(attr, ("",))[0] == "borrowed"
                how = ("the file already borrows it" if borrowed else
                       f"add `{attr} = {alias}.{attr}` at module level")
                problems.append(f"refers to `{alias}.{attr}`: a pasted copy has no module "
                                f"`{alias}`; call `{attr}` instead ({how}) and declare "
                                f"`{attr} ({origin[0]})`")
                expected[attr] = origin[0]
        else:
            problems.append(f"refers to `{name}`, which neither {FILES[tag]} nor the builtins "
                            "define")
    return expected, problems


def imported_inside(node):
    """Modules a function imports in its own body (`import torchvision` inside the def)."""
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names} | {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module:
            found |= {n.module, n.module.split(".")[0]}
    return found


def module_imports(tag):
    """{module name: [import lines]}: how a file imports each module, one line per name."""
    out = {}
    for kind, detail, _ in bindings(tag).values():
        if kind == "module":
            out.setdefault(detail[0], []).append(detail[1])
    return out


def module_name(tag, name):
    """`F` (bound by `import torch.nn.functional as F`) -> "torch.nn.functional"; else name.

    A Needs line may name a module by its name or by the name the file binds it to.
    """
    kind, detail, _ = bindings(tag).get(name, (None, None, None))
    return detail[0] if kind == "module" else name


def declared_needs(node):
    """Parse the docstring's Needs line -> ({name: tag or None}, [problems]); None if absent.

    `Needs:` starts a line, or ends a one-line docstring ("delta_n without the 1/B. Needs:
    softmax (02)"); a trailing comma continues the list on the next line.
    """
    doc = ast.get_docstring(node)
    if doc is None:
        return None, ["has no docstring, so no `Needs:` line"]
    found = list(re.finditer(r"(?:^|(?<=\s))Needs:(.*)$", doc, re.M))
    if not found:
        return None, ["its docstring has no `Needs:` line"]
    problems = ["its docstring has more than one `Needs:` line"] if len(found) > 1 else []
    text, rest = found[0].group(1), doc[found[0].end():].splitlines()[1:]
    while text.rstrip().endswith(",") and rest:  # a trailing comma goes on
        text += " " + rest.pop(0).strip()
    items = [item.strip() for item in text.split(",")]
    if items == ["nothing"]:
        return {}, problems
    declared = {}
    for item in items:
        m = NEEDS_ITEM.fullmatch(item)
        if not m:
            problems.append(f"cannot read {item!r} in the Needs line (write `name` or "
                            f"`name (tag)` with a tag {TAGS}, or `Needs: nothing`)")
        elif m.group(2) is not None and m.group(2) not in FILES:
            problems.append(f"{item!r}: the part in brackets must be a file tag {TAGS}")
        elif m.group(1) in declared:
            problems.append(f"`{m.group(1)}` is listed twice")
        else:
            declared[m.group(1)] = m.group(2)
    return declared, problems


def needs_text(needs):
    return ", ".join(name if t is None else f"{name} ({t})" for name, t in needs.items()) \
        or "nothing"


# ----------------------------------------------------------------------------- 1. declarations

def all_functions():
    """Every public function of the five files as "tag:name" (a file that does not parse
    right now shows up as "tag:<does not parse>")."""
    ids = []
    for tag in FILES:
        if source(tag)[1] is None:
            ids.append(f"{tag}:<does not parse>")
        ids += [f"{tag}:{name}" for name in public_functions(tag)]
    return ids


FUNCTIONS = all_functions()


def node_of(case):
    tag, name = case.split(":")
    if name == "<does not parse>":
        text = source(tag)[0]
        try:
            ast.parse(text)
        except SyntaxError as err:
            pytest.fail(f"{FILES[tag]} does not parse: {err}")
    return tag, name, public_functions(tag)[name]


@pytest.mark.parametrize("case", FUNCTIONS)
def test_needs_line_matches_the_body(case):
    tag, name, node = node_of(case)
    expected, problems = expected_needs(tag, node)
    declared, parse_problems = declared_needs(node)
    problems += parse_problems
    if declared is not None:
        declared = {module_name(tag, n) if t is None else n: t for n, t in declared.items()}
        missing = {n: t for n, t in expected.items() if n not in declared}
        stale = {n: t for n, t in declared.items() if n not in expected}
        if missing:
            problems.append(f"missing: {needs_text(missing)}")
        if stale:
            problems.append(f"stale (declared, but the body does not refer to it): "
                            f"{needs_text(stale)}")
        local = sorted(set(stale) & imported_inside(node))
        if local:
            problems.append(f"{', '.join(local)}: the body imports it itself, and a pasted "
                            "copy carries that import, so the Needs line does not list it")
        for n, t in declared.items():
            if n in expected and expected[n] != t:
                really = (f"{n} is defined in this file: write it bare" if expected[n] is None
                          else f"{FILES[expected[n]]} defines it")
                problems.append(f"wrong tag: `{needs_text({n: t})}` should be "
                                f"`{needs_text({n: expected[n]})}` ({really})")
    if problems:
        pytest.fail(f"{FILES[tag]}: {name}\n  - " + "\n  - ".join(problems)
                    + f"\n  the docstring should say:  Needs: {needs_text(expected)}",
                    pytrace=False)


# ----------------------------------------------------------------------------- 2. copying out

class CopyError(Exception):
    """The Needs lines do not lead to a complete copy."""


def paste_list(tag, name):
    """Follow the Needs lines from tag:name -> (import lines, [(tag, name, source)] deps first).

    Constants, classes and private helpers without a Needs line: what they refer to is read
    from their source.
    """
    imports, pieces, seen, names = [], [], set(), {}

    def visit(tag, name, why):
        if (tag, name) in seen:
            return
        seen.add((tag, name))
        kind, _, node = bindings(tag).get(name, (None, None, None))
        if kind not in ("def", "constant"):
            raise CopyError(f"{why}: {FILES[tag]} defines no `{name}` (it is a {kind})")
        needs, problems = declared_needs(node) if hasattr(node, "name") else (None, [])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                needs is not None or not name.startswith("_")):
            if needs is None:
                raise CopyError(f"{tag}:{name} ({why}): {problems[0]}, so nothing says "
                                "what to paste with it")
        else:
            needs = expected_needs(tag, node)[0]
        for need, need_tag in needs.items():
            need = module_name(tag, need) if need_tag is None else need
            where = f"{need} ({need_tag})" if need_tag else need
            if need_tag is not None:
                if need_tag not in FILES or bindings(need_tag).get(need, ("",))[0] != "def":
                    raise CopyError(f"{tag}:{name} needs `{where}`, but "
                                    f"{FILES.get(need_tag, need_tag)} defines no `{need}`")
                visit(need_tag, need, f"needed by {tag}:{name}")
                continue
            kind, _, _ = bindings(tag).get(need, (None, None, None))
            if need in module_imports(tag) and kind not in ("def", "constant"):
                imports.extend(line for line in module_imports(tag)[need] if line not in imports)
            elif kind in ("def", "constant"):
                visit(tag, need, f"needed by {tag}:{name}")
            elif kind == "borrowed":
                raise CopyError(f"{tag}:{name} needs `{where}`, which {FILES[tag]} borrows: "
                                "add the tag of the file that defines it")
            else:
                raise CopyError(f"{tag}:{name} needs `{where}`, which {FILES[tag]} neither "
                                "defines nor imports at module level")
        if name in names and names[name] != tag:
            raise CopyError(f"two different `{name}` would be pasted: from "
                            f"{FILES[names[name]]} and from {FILES[tag]}")
        names[name] = tag
        if segment(tag, node) not in [src for _, _, src in pieces]:  # `A, B = 1, 2` once
            pieces.append((tag, name, segment(tag, node)))

    visit(tag, name, "the function copied")
    return imports, pieces


FORBIDDEN_IMPORTS = {"common", "importlib", *TAG_OF_MODULE}


def guarded_import(name, *args, **kwargs):
    if name.split(".")[0] in FORBIDDEN_IMPORTS:
        raise ImportError(f"a copied function may not import {name}: it must stand alone")
    return builtins.__import__(name, *args, **kwargs)


def copy_out(tag, name, folder):
    """A fresh namespace holding only the pasted imports and sources -> the copied function."""
    imports, pieces = paste_list(tag, name)
    code = "\n".join(imports) + "\n\n\n" + "\n\n".join(src for _, _, src in pieces)
    namespace = {"__name__": "copied_out", "__doc__": None,
                 "__file__": str(folder / "copied_out.py"),
                 "__builtins__": {**vars(builtins), "__import__": guarded_import}}
    exec(compile(code, f"<{tag}:{name} pasted alone>", "exec"), namespace)  # noqa: S102
    return namespace[name], imports, pieces


# Example inputs: "tag:name" -> a factory returning (args, kwargs). It is called once for the
# copy and once for the original, so both get fresh, equal tensors and equally seeded
# generators. A factory that takes a parameter gets a fresh empty folder to write files in.

def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


CPUINFO = ("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\n"
           "flags\t\t: fpu sse4_2 avx avx2 fma\n")


def labels(n, classes, seed=0):
    return torch.randint(0, classes, (n,), generator=gen(seed))


def mlp_params(sizes=(5, 4, 3), seed=1, dtype=torch.float64):
    """Random non-zero (W1, b1, ..., Wn, bn): zeros could hide a difference."""
    g = gen(seed)
    return tuple(t for i, o in zip(sizes[:-1], sizes[1:])
                 for t in (torch.randn(i, o, generator=g, dtype=dtype) / math.sqrt(i),
                           0.1 * torch.randn(o, generator=g, dtype=dtype)))


def mlp_cache(params, x):
    """(x, h1, ..., logits) as mlp_forward returns it, computed here with tensor methods."""
    cache = [x]
    for i in range(0, len(params) - 2, 2):
        cache.append((cache[-1] @ params[i] + params[i + 1]).clamp(min=0))
    return tuple(cache) + (cache[-1] @ params[-2] + params[-1],)


def lesson(tag):
    return importlib.import_module(FILES[tag].removesuffix(".py"))


def small_config():
    """A training config of lesson 04 for tiny images of 4 x 4 pixels."""
    return {"hidden": [6], "epochs": 2, "batch_size": 8, "lr": 0.1, "momentum": 0.9,
            "weight_decay": 0.01, "schedule": "linear", "val_size": 4, "shift": 1,
            "rotate": 5.0, "scale": 0.1, "elastic": 0.0, "elastic_sigma": 4.0, "smoothing": 0.1,
            "seed": 0,
            "limit": None, "step": "inplace", "preset": "default"}


def tiny_digits():
    """(X_train, y_train, X_val, y_val, X_test, y_test): 24 + 8 + 8 random 28 x 28 images."""
    X, y = randn(40, 784, dtype=torch.float32).sigmoid(), labels(40, 10)
    return X[:24], y[:24], X[24:32], y[24:32], X[32:], y[32:]


def ablation_runs():
    """Two seeds' results for the first rung, as run_ablation records them."""
    config = lesson("04").ablation_configs(0)[0][1]
    return [{"rung": 0, "seed": s, "label": "x", "config": config, "val_accuracy": 0.9 + s / 100,
             "test_accuracy": 0.91 - s / 100, "train_seconds": 10.0 + s} for s in (0, 1)]


def history():
    return [{"epoch": 1, "loss": 0.9, "val_loss": 0.8, "val_accuracy": 0.7, "seconds": 1.5},
            {"epoch": 2, "loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.8, "seconds": 1.25}]


def fails_with_value_error(argv):
    raise ValueError(f"bad input {argv}")


P, X, Y = mlp_params, randn(6, 5, seed=2), labels(6, 3, seed=3)  # (B, D) = (6, 5), C = 3
def chained_error():
    """A RuntimeError raised while an OSError was being handled, as torch.save raises one."""
    try:
        try:
            raise OSError(27, "File too large")
        except OSError:
            raise RuntimeError("unexpected pos") from None
    except RuntimeError as err:
        return err


EXAMPLES = {
    "01:sigmoid": lambda: ((torch.tensor([-1e4, -3.0, 0.0, 0.5, 1e4]),), {}),
    "01:check_labels": lambda: ((Y.clone(), 3), {}),
    "01:one_hot": lambda: ((Y.clone(), 3, torch.float64), {}),
    "01:bce_with_logits": lambda: ((3 * randn(6), labels(6, 2)), {}),
    "01:logreg_init": lambda: ((5, gen(4)), {}),
    "01:logreg_forward": lambda: (((randn(5), randn(1)), X.clone()), {}),
    "01:logreg_backward": lambda: ((X.clone(), randn(6, seed=5), labels(6, 2)), {}),
    "01:linear_decay": lambda: ((0.5, 3, 10), {}),
    "01:sgd_step": lambda: ((P(), P(seed=7), 0.1), {}),
    "01:check_grads": lambda: ((P(), P(seed=7)), {}),
    "01:is_nine": lambda: ((torch.tensor([0, 9, 3, 9, 8]),), {}),
    "01:binary_metrics": lambda: ((randn(8), labels(8, 2)), {}),
    "01:train": lambda: (((0.1 * randn(5), torch.zeros(1, dtype=torch.float64)), randn(20, 5),
                          labels(20, 2), 2, 8, 0.5, gen(8)), {}),
    "02:init_params": lambda: (([5, 4, 3], gen(4)), {"dtype": torch.float64}),
    "02:linear_forward": lambda: ((X.clone(), randn(5, 3, seed=1), randn(3, seed=2)), {}),
    "02:relu": lambda: ((randn(6, 4),), {}),
    "02:softmax": lambda: ((10 * randn(6, 3),), {}),
    "02:log_softmax": lambda: ((10 * randn(6, 3),), {}),
    "02:cross_entropy": lambda: ((randn(6, 3), Y.clone()), {}),
    "02:mlp_forward": lambda: ((P(), X.clone()), {}),
    "02:count_params": lambda: ((P(),), {}),
    "02:describe": lambda: ((P(), [5, 4, 3]), {}),
    "02:activation_scales": lambda: ((X.clone(), 4, 3, lambda fan_in: math.sqrt(2 / fan_in),
                                      gen(5)), {}),
    "03:softmax_cross_entropy_backward": lambda: ((randn(6, 3), Y.clone()), {}),
    "03:linear_backward": lambda: ((randn(6, 3), X.clone(), randn(5, 3, seed=1)), {}),
    "03:relu_backward": lambda: ((randn(6, 4), randn(6, 4, seed=1).clamp(min=0)), {}),
    "03:mlp_backward_from": lambda: ((P(), mlp_cache(P(), X), randn(6, 3, seed=9)), {}),
    "03:mlp_backward": lambda: ((P(), mlp_cache(P(), X), Y.clone()), {}),
    "03:softmax_jacobian": lambda: ((randn(6, 3).softmax(dim=1),), {}),
    "03:notebook_softmax_cross_entropy_backward": lambda: ((randn(6, 3), Y.clone()), {}),
    "03:notebook_mlp_backward": lambda: ((P(), mlp_cache(P(), X), Y.clone()), {}),
    "03:random_params": lambda: (([5, 4, 3], gen(4)), {}),
    "03:with_entry": lambda: ((P(), 2, 3, 0.5), {}),
    "03:finite_difference": lambda: ((P(), X.clone(), Y.clone(), 0, 3, 1e-6), {}),
    "03:relative_error": lambda: (([0.3, -0.2, 0.0], [0.31, -0.2, 1e-9]), {}),
    "03:gradient_check": lambda: (([4, 3, 2], gen(4), torch.device("cpu")),
                                  {"batch": 2, "entries": 2}),
    "03:shape_walkthrough": lambda: ((P(), X.clone(), Y.clone()), {}),
    "03:interleaved_seconds": lambda: (([lambda: None, lambda: None], torch.device("cpu")),
                                       {"repeats": 3}),
    "03:median": lambda: (([3.0, 1.0, 2.0, 5.0],), {}),
    "03:ratio_summary": lambda: (([2.0, 4.0, 6.0, 8.0, 3.0], [1.0, 2.0, 2.0, 2.0, 3.0]), {}),
    "03:backward_with": lambda: ((P(), mlp_cache(P(), X), Y.clone()), {}),
    "03:bug_no_mean": lambda: ((randn(6, 3), Y.clone()), {}),
    "03:bug_no_max_shift": lambda: ((randn(6, 3), Y.clone()), {}),
    "03:bug_softmax_as_sigmoid": lambda: ((randn(6, 3), Y.clone()), {}),
    "03:bug_transposed_dW": lambda: ((randn(6, 3), X.clone(), randn(5, 3, seed=1)), {}),
    "03:bug_bias_first_row": lambda: ((randn(6, 3), X.clone(), randn(5, 3, seed=1)), {}),
    "03:bug_no_relu_mask": lambda: ((randn(6, 4), randn(6, 4, seed=1).clamp(min=0)), {}),
    "03:bug_mask_from_gradient": lambda: ((randn(6, 4), randn(6, 4, seed=1).clamp(min=0)), {}),
    "03:bug_backward": lambda: (("no-relu-mask",), {}),
    "03:list_bugs": lambda: ((), {}),
    "04:train_step": lambda: ((P(), P(seed=2), X.clone(), Y.clone(), 0.1, 0.9),
                              {"weight_decay": 0.01}),
    "04:train_step_": lambda: ((P(), P(seed=2), X.clone(), Y.clone(), 0.1, 0.9),
                               {"weight_decay": 0.01}),
    # step_fn: the original's in-place step for both calls (a function given as an argument)
    "04:train_epoch": lambda: ((P((16, 6, 3), dtype=torch.float32),
                                P((16, 6, 3), seed=2, dtype=torch.float32),
                                randn(20, 16, dtype=torch.float32).sigmoid(), labels(20, 3),
                                small_config(), gen(4), 0, 6, lesson("04").train_step_), {}),
    "04:init_velocity": lambda: ((P(),), {}),
    "04:check_velocity": lambda: ((P(), P(seed=2)), {}),
    "04:momentum_step": lambda: ((P(), P(seed=2), P(seed=3), 0.1, 0.9), {}),
    "04:momentum_step_": lambda: ((P(), P(seed=2), P(seed=3), 0.1, 0.9), {"weight_decay": 0.01}),
    "04:add_weight_decay": lambda: ((P(seed=3), P(), 0.01), {}),
    "04:mosaic": lambda: ((randn(3, 4, 4, dtype=torch.float32), 2), {"gap": 1, "fill": 0.0}),
    "04:smoothed_cross_entropy": lambda: ((randn(6, 3), labels(6, 3), 0.1), {}),
    "04:smoothed_cross_entropy_backward": lambda: ((randn(6, 3), labels(6, 3), 0.1), {}),
    "04:learning_rate": lambda: ((small_config(), 5, 20), {}),
    "04:fused_train_step_": lambda: ((P(), P(seed=2), X.clone(), Y.clone(), 0.1, 0.9),
                                     {"weight_decay": 0.01}),
    "04:augment_batch": lambda: ((randn(3, 16, dtype=torch.float32).sigmoid(), small_config(),
                                  gen(4)), {}),
    "04:random_shift": lambda: ((randn(3, 16), 1, gen(4)), {}),
    "04:affine_theta": lambda: ((randn(3), 1 + 0.1 * randn(3, seed=1), randn(3, 2, seed=2), 4),
                                {}),
    "04:affine_matrices": lambda: ((3, gen(4), 10.0, 0.1, 2.0, 4), {}),
    "04:gaussian_matrix": lambda: ((6, 1.5), {}),
    "04:elastic_displacement": lambda: ((2, gen(4), 3.0, 1.5, 6), {}),
    "04:sampling_grid": lambda: ((randn(2, 2, 3), 4), {}),
    "04:warp": lambda: ((randn(2, 16).sigmoid(), randn(2, 2, 3, seed=1),
                         0.1 * randn(2, 4, 4, 2, seed=2)), {}),
    "04:augment": lambda: ((randn(2, 36, dtype=torch.float32).sigmoid(), gen(4), 10.0, 0.1, 1.0,
                            3.0, 1.5), {}),
    "04:predict": lambda: ((P(), X.clone()), {"chunk": 4}),
    "04:evaluate": lambda: ((P(), X.clone(), Y.clone()), {}),
    "04:all_finite": lambda: (([randn(3), torch.tensor([1.0, math.inf])],), {}),
    "04:check_finite_losses": lambda: ((torch.tensor([0.5, math.nan, math.inf]), 20, 43, 0.1),
                                       {}),
    "04:check_finite_after_epoch": lambda: ((P(), P(seed=2), X.clone(), Y.clone(), 3, 0.1), {}),
    "04:build_parser": lambda: ((), {}),
    "04:given_flags": lambda: ((argparse.Namespace(lr=0.1, momentum=None, batch_size=3),
                                ["lr", "momentum", "batch_size", "hidden"]), {}),
    "04:resolve_config": lambda: ((lesson("04").build_parser().parse_args(["--epochs", "2"]),),
                                  {}),
    "04:check_config": lambda: ((small_config(),), {}),
    "04:describe_config": lambda: ((small_config(),), {}),
    "04:save_checkpoint": lambda tmp: ((tmp / "checkpoint.pt", P(), P(seed=2), small_config(),
                                        2, gen(4), history()), {}),
    "04:load_checkpoint": lambda tmp: ((checkpoint_for_loading(tmp),), {}),
    "04:check_saved_config": lambda: ((small_config(),), {}),
    "04:check_only_files_at": lambda tmp: ((tmp, ("metrics.json", ".lock")), {}),
    "04:mark_stopped": lambda tmp: ((written(tmp / "metrics.json", {"status": "running",
                                                                     "history": []}),
                                     "interrupted"), {}),
    "04:finite_number": lambda: ((10**400,), {}),
    "04:history_agrees": lambda: ((history(), 2, True), {}),
    "04:read_record": lambda tmp: ((written(tmp / "metrics.json", {"status": "running"}),), {}),
    "04:run_status": lambda tmp: ((written(tmp / "metrics.json", {"status": "finished"}),), {}),
    "04:read_ablation_runs": lambda tmp: ((written(tmp / "ablation.json", {"runs": [
        {"rung": 0, "seed": 0, "label": "x", "config": {}, "val_accuracy": 0.5,
         "test_accuracy": 0.5, "train_seconds": 1.0}]}),), {}),
    # started = inf makes total_seconds (now - started) -inf in both calls, not a wall time
    "04:metrics_record": lambda: ((small_config(), torch.device("cpu"), history(), "running",
                                   math.inf), {"final": {"test_accuracy": 0.5}}),
    "04:confusion_matrix": lambda: ((labels(20, 3), labels(20, 3, seed=1), 3), {}),
    # two epochs of the whole loop on 24 random "digits" (seconds are wall times: not compared)
    "04:fit": lambda: ((dict(small_config(), hidden=[8], rotate=0.0), tiny_digits(), gen(4)),
                       {"log": lambda line: None}),
    "04:prepare": lambda tmp: ((lesson("04").build_parser().parse_args(
        ["--device", "cpu", "--epochs", "3", "--out", str(tmp / "run")]),), {}),
    "04:interrupted_message": lambda: ((argparse.Namespace(preset="notebook", out=None),
                                        ROOT / "runs" / "never-made"), {}),
    "04:file_identity": lambda: ((ROOT / "README.md",), {}),
    "04:ablation_configs": lambda: ((3,), {}),
    "04:command_for": lambda: ((dict(lesson("04").ablation_configs(0)[4][1], seed=0),), {}),
    "04:mean_std": lambda: (([1.0, 2.0, 4.0],), {}),
    "04:ablation_table": lambda: ((ablation_runs(),), {}),
    "common:make_generator": lambda: ((3,), {}),
    "common:train_val_split": lambda: ((randn(10, 3), labels(10, 3), 4, gen(4)), {}),
    "common:minibatches": lambda: ((randn(10, 3), labels(10, 3), 4, gen(4)), {}),
    "common:accuracy": lambda: ((randn(8, 3), labels(8, 3)), {}),
    "common:result_line": lambda: ((), {"acc": 0.98765, "tiny": 1e-5, "n": 3, "ok": True,
                                        "none": None}),
    "common:pick_device": lambda: (("cpu",), {}),
    "common:add_run_args": lambda: ((argparse.ArgumentParser(exit_on_error=False),), {}),
    "common:parse_args": lambda: ((seed_parser(), ["--seed", "3"]), {}),
    "common:show_progress": lambda: ((False, io.StringIO()), {}),
    "common:run_main": lambda: ((fails_with_value_error, ["x"]), {}),
    "common:is_out_of_memory": lambda: ((RuntimeError("DefaultCPUAllocator: can't allocate "
                                                      "memory"),), {}),
    "common:out_of_memory_message": lambda: ((RuntimeError("you tried to allocate 1048576 "
                                                           "bytes"),), {}),
    "common:no_space_message": lambda: ((OSError(28, "No space left on device", "m.json"),),
                                        {}),
    "common:os_error_behind": lambda: ((chained_error(),), {}),
    "common:verification_wanted": lambda: ((None, {"MNIST_UNVERIFIED": "1"}), {}),
    "common:check_mnist_counts": lambda: (("t10k-labels", 60_000, "t10k"), {}),
    "common:mps_available": lambda: ((), {}),
    "common:cpu_description": lambda: ((CPUINFO,), {}),
    "common:device_description": lambda: ((torch.device("cpu"),), {}),
    "common:int_in": lambda: ((0, 10), {}),
    "common:float_in": lambda: ((0, None), {"lo_open": True}),
    "common:finite_or_none": lambda: (({"a": [1.5, math.nan], "b": (-math.inf, 2)},), {}),
    "common:strict_json_bytes": lambda: (({"a": [1.5, math.nan], "b": (-math.inf, 2)},), {}),
    "common:save_json": lambda tmp: ((tmp / "m.json", {"a": [1.5, math.nan], "b": "c"}), {}),
    "common:pyplot": lambda: ((), {}),
    "common:save_figure": lambda tmp: ((tmp / "f.png",
                                        lesson("common").pyplot().figure(figsize=(1, 1))), {}),
    "common:install_interrupt_handlers": lambda: ((("SIGUSR1",),), {}),
    "common:restore_interrupt_handlers": lambda: (({"received": [], "previous": {
        signal.SIGUSR1: signal.getsignal(signal.SIGUSR1)}},), {}),
}
RAISES = {  # copy and original must both raise this, with the same message
    "common:check_mnist_counts": ValueError,
    "04:check_finite_losses": FloatingPointError,
}
THEN = {  # what to compare instead of a returned function, or how to undo a side effect
    "04:fit": lambda result: (result[0], result[1], [dict(h, seconds=0) for h in result[2]]),
    "03:bug_backward": lambda backward: backward(P(), mlp_cache(P(), X), Y.clone()),
    "common:int_in": lambda parse: try_each(parse, ["3", "11", "-1", "x"]),
    "common:float_in": lambda parse: try_each(parse, ["0.5", "0", "nan", "inf", "x"]),
    "common:install_interrupt_handlers": lambda record: uninstall(record),
}
WALL_TIME = {"03:interleaved_seconds"}  # returns wall times: only the type is compared
PICTURE = ("only draws a picture (seconds of matplotlib layout); common's pyplot and "
           "save_figure, which it calls, are copied and run")
SKIP = {
    "01:main": "runs a whole lesson: tests/test_lessons_run.py covers it",
    "02:main": "runs a whole lesson: tests/test_lessons_run.py covers it",
    "03:main": "runs a whole lesson: tests/test_lessons_run.py covers it",
    "04:main": "runs a whole lesson: tests/test_lessons_run.py covers it",
    "04:train": "trains on the real MNIST files: tests/test_train.py covers it",
    "04:run_eval": "reads the real MNIST test set: tests/test_train.py covers it",
    "04:prepare_data": "reads the real MNIST files: tests/test_train.py covers it",
    "04:run_ablation": "trains the whole ablation ladder on MNIST: tests/test_train.py covers it",
    "03:run_gradient_check": "seconds of finite differences over CHECK_NETWORKS, printed as a "
                             "table; gradient_check, which it calls, is copied and run",
    "01:plot_weights": PICTURE,
    "04:plot_curves": PICTURE,
    "04:plot_predictions": PICTURE,
    "04:plot_first_layer": PICTURE,
    "04:plot_confusion": PICTURE,
}
# common.py's MNIST file and network layer gets the Needs check only (issue 9, point 3).
COMMON_FILES_AND_NETWORK = {
    "mnist_raw_dir", "sha256_file", "atomic_write", "read_idx", "idx_bytes", "file_key",
    "verify_files", "fetch_from_torchvision", "pip_download", "unpickle_arrays",
    "mnist_from_wheel", "fetch_from_package_index", "fetch_mnist", "load_mnist",
    "load_mnist_limited", "lock_folder", "clean_leftovers", "check_writable_dir",
}
TOLERANCE = {}  # "tag:name" -> (rtol, atol); empty: the copy runs the same source, so exact


def seed_parser():
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def try_each(fn, inputs):
    """[what fn(x) returned or raised, for each x]: compares two argparse type functions."""
    out = []
    for x in inputs:
        try:
            out.append(("returned", fn(x)))
        except Exception as err:
            out.append(("raised", type(err), str(err)))
    return out


def uninstall(record):
    """A snapshot of install_interrupt_handlers' record; then the old handlers go back."""
    snapshot = {"received": list(record["received"]), "previous": dict(record["previous"])}
    lesson("common").restore_interrupt_handlers(record)
    return snapshot


def written(path, obj):
    """path, after writing obj into it as JSON."""
    path.write_text(json.dumps(obj))
    return path


def checkpoint_for_loading(folder):
    """A checkpoint written by the original save_checkpoint, for load_checkpoint to read."""
    path = folder / "checkpoint.pt"
    params = mlp_params((784, 6, 10), dtype=torch.float32)
    velocity = mlp_params((784, 6, 10), seed=2, dtype=torch.float32)
    lesson("04").save_checkpoint(path, params, velocity, small_config(), 2, gen(4), history())
    return path


def comparable(value):
    """Values that do not compare with == made comparable: generators, parsers, figures."""
    if inspect.isgenerator(value):
        return list(value)
    if isinstance(value, argparse.ArgumentParser):  # its options, not its object identity
        return [(a.option_strings, a.dest, a.default, getattr(a.type, "__qualname__", a.type),
                 a.nargs, a.help) for a in value._actions]
    if isinstance(value, torch.Generator):
        return ("generator state", value.get_state())
    if isinstance(value, (io.StringIO, io.BytesIO)):
        return (type(value).__name__, value.getvalue())
    if isinstance(value, argparse.Namespace):
        return vars(value)
    return value


def assert_same(copy, original, where, roots, tol=None):
    """Exactly equal, recursively (tensors: same dtype, device, shape and values)."""
    copy, original = comparable(copy), comparable(original)
    if isinstance(original, torch.Tensor):
        assert isinstance(copy, torch.Tensor), f"{where}: the copy gave {type(copy).__name__}"
        rtol, atol = tol or (0, 0)
        torch.testing.assert_close(copy, original, rtol=rtol, atol=atol, equal_nan=True,
                                   msg=lambda m: f"{where}: the copy differs: {m}")
    elif isinstance(original, (tuple, list)):
        assert type(copy) is type(original) and len(copy) == len(original), \
            f"{where}: the copy gave {type(copy).__name__} of {len(copy)}, original " \
            f"{type(original).__name__} of {len(original)}"
        for i, (c, o) in enumerate(zip(copy, original)):
            assert_same(c, o, f"{where}[{i}]", roots, tol)
    elif isinstance(original, dict):
        assert isinstance(copy, dict) and copy.keys() == original.keys(), \
            f"{where}: keys {sorted(copy)} != {sorted(original)}"
        for k in original:
            assert_same(copy[k], original[k], f"{where}[{k!r}]", roots, tol)
    elif isinstance(original, pathlib.PurePath) and original.is_relative_to(roots[1]):
        assert copy.relative_to(roots[0]) == original.relative_to(roots[1]), where
    elif isinstance(original, str) and str(roots[1]) in original:  # a path in each one's folder
        assert copy.replace(str(roots[0]), "<folder>") == original.replace(str(roots[1]),
                                                                            "<folder>"), where
    elif type(original).__eq__ is object.__eq__:  # no notion of equal (a figure): same type
        assert type(copy) is type(original), f"{where}: the copy gave {type(copy).__name__}"
    elif isinstance(original, float) and math.isnan(original):
        assert isinstance(copy, float) and math.isnan(copy), f"{where}: {copy} != nan"
    else:
        assert copy == original, f"{where}: the copy gave {copy!r}, the original {original!r}"


def assert_same_files(copy_dir, original_dir, roots):
    """The two folders hold the same files; .pt files compare by content, others by bytes."""
    files = sorted(p.relative_to(original_dir) for p in original_dir.rglob("*") if p.is_file())
    copied = sorted(p.relative_to(copy_dir) for p in copy_dir.rglob("*") if p.is_file())
    assert copied == files, f"the copy wrote {copied}, the original {files}"
    for rel in files:
        a, b = (copy_dir / rel).read_bytes(), (original_dir / rel).read_bytes()
        if rel.suffix == ".pt" and a != b:
            assert_same(torch.load(copy_dir / rel, weights_only=True),
                        torch.load(original_dir / rel, weights_only=True), str(rel), roots)
        else:
            assert a == b, f"{rel}: the copy wrote {len(a)} bytes, the original {len(b)}, unequal"


def call(case, fn, folder):
    """-> (outcome, args, kwargs); outcome is ("returned", value) or ("raised", type, message)."""
    folder.mkdir()
    factory, expected_error = EXAMPLES[case], RAISES.get(case)
    args, kwargs = factory(folder) if inspect.signature(factory).parameters else factory()
    try:
        value = fn(*args, **kwargs)
        return ("returned", comparable(THEN[case](value) if case in THEN else value)), args, kwargs
    except BaseException as err:  # KeyboardInterrupt too: raise_keyboard_interrupt's whole job
        if expected_error is None or not isinstance(err, expected_error):
            raise
        return ("raised", type(err), str(err)), args, kwargs


@pytest.mark.parametrize("case", FUNCTIONS)
def test_copied_function_gives_the_same_result(case, tmp_path):
    tag, name, _ = node_of(case)
    if case in SKIP:
        pytest.skip(SKIP[case])
    if tag == "common" and name in COMMON_FILES_AND_NETWORK:
        pytest.skip("common.py's MNIST file and network layer: only its Needs line is checked")
    if case not in EXAMPLES:
        pytest.fail(f"add an example for {case} to EXAMPLES in tests/test_copy_out.py (or, for a "
                    "function that cannot run in a unit test, a SKIP entry with the reason)",
                    pytrace=False)
    try:
        copied, imports, pieces = copy_out(tag, name, tmp_path)
    except CopyError as err:
        pytest.fail(f"{case} cannot be copied out by following the Needs lines: {err}",
                    pytrace=False)
    pasted = "; ".join(imports + [f"{n} ({t})" for t, n, _ in pieces])
    original = getattr(lesson(tag), name)
    roots = (tmp_path / "copy", tmp_path / "original")
    try:
        got = call(case, copied, roots[0])
    except NameError as err:
        pytest.fail(f"{case} copied alone raised NameError ({err}): its Needs lines, followed "
                    f"transitively, miss a name. Pasted: {pasted}", pytrace=False)
    want = call(case, original, roots[1])
    if case in WALL_TIME:
        assert type(got[0][1]) is type(want[0][1])
    else:
        tol = TOLERANCE.get(case)
        assert_same(got[0], want[0], f"{case} result", roots, tol)
        assert_same(got[1:], want[1:], f"{case} arguments after the call", roots, tol)
    assert_same_files(*roots, roots)


def test_examples_and_skips_name_functions_that_exist():
    known = set(FUNCTIONS)
    listed = set(EXAMPLES) | set(SKIP) | set(RAISES) | set(THEN) | WALL_TIME | set(TOLERANCE)
    stale = sorted(listed - known)
    stale += sorted(f"common:{n}" for n in COMMON_FILES_AND_NETWORK if f"common:{n}" not in known)
    assert not stale, f"tests/test_copy_out.py lists functions that no longer exist: {stale}"
    both = sorted(set(EXAMPLES) & set(SKIP))
    assert not both, f"these have an example and a SKIP entry; drop the SKIP: {both}"


# ----------------------------------------------------------------------------- 3. the README

README = ROOT / "README.md"
README_SECTION = "## Copying a function"


def readme_example():
    """-> (the section's prose, the code of its one python block)."""
    text = README.read_text()
    m = re.search(rf"^{re.escape(README_SECTION)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        pytest.fail(f"README.md has no section `{README_SECTION}` yet (issue 9, point 4): a "
                    "copied training loop, the list of what to paste, one python block",
                    pytrace=False)
    blocks = re.findall(r"^```python[ \t]*\n(.*?)^```", m.group(1), re.M | re.S)
    if len(blocks) != 1:
        pytest.fail(f"README's `{README_SECTION}` must hold exactly one ```python block, "
                    f"it holds {len(blocks)}", pytrace=False)
    return m.group(1).replace(blocks[0], ""), blocks[0]


def test_readme_copy_example_runs(tmp_path):
    prose, code = readme_example()
    tree = ast.parse(code)
    lines = code.splitlines(keepends=True)
    problems = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                module = (alias.name if isinstance(stmt, ast.Import) else stmt.module or "")
                if module.split(".")[0] in FORBIDDEN_IMPORTS:
                    problems.append(f"it imports {module}: the example must stand alone")
        if not isinstance(stmt, ast.FunctionDef):
            continue
        start = min([stmt.lineno] + [d.lineno for d in stmt.decorator_list])
        pasted = "".join(lines[start - 1:stmt.end_lineno])
        sources = {tag: segment(tag, public_functions(tag)[stmt.name]) for tag in FILES
                   if stmt.name in public_functions(tag)}
        if not sources:
            problems.append(f"`def {stmt.name}` is no public function of the lessons or common")
        elif pasted not in sources.values():
            problems.append(f"`def {stmt.name}` differs from the source in "
                            f"{' / '.join(FILES[t] for t in sources)}: paste it again")
        if f"`{stmt.name}`" not in prose:
            problems.append(f"`{stmt.name}` is pasted but the section's list does not name it")
    threshold = re.search(r"above\s+([\d.]+)\s*%", code)
    if threshold is None:
        problems.append("the block must state what it expects, e.g. `# expected: above 95 %`")
    assert not problems, "README `Copying a function`:\n  - " + "\n  - ".join(problems)

    script = tmp_path / "copied_training_loop.py"
    script.write_text(code)
    # -I: no PYTHONPATH, no user site, no script folder on sys.path; cwd: an empty folder, so
    # nothing of this repository can be imported. One thread: the tiny matmuls gain nothing
    # from more, and on a busy 2-core CI machine spinning threads make the loop 10x slower.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OMP_", "MKL_"))}
    done = subprocess.run([sys.executable, "-I", str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"the README example failed:\n{done.stderr[-3000:]}"
    found = re.findall(r"accuracy\D*?([\d.]+)\s*%", done.stdout)
    assert found, f"the README example printed no `accuracy NN.N %`:\n{done.stdout[-2000:]}"
    assert float(found[-1]) > float(threshold.group(1)), done.stdout[-2000:]


def test_readme_gives_the_import_line_of_every_module_not_imported_by_its_name():
    """A Needs line names a module as the lessons import it (`F`, `tqdm`, `pathlib`); where the
    lesson's import line is not `import NAME`, README's section must show that line, or a
    user pasting `import tqdm` gets a module where the code calls a function."""
    prose, _ = readme_example()
    missing = set()
    for case in FUNCTIONS:
        tag, name, node = node_of(case)
        for bound in referenced_globals(tag, node):
            kind, detail, _ = bindings(tag).get(bound, (None, None, None))
            if kind != "module":
                continue
            module, line = detail
            if line not in (f"import {module}", f"import {bound}") and line not in prose:
                missing.add(f"{line}  (for `{bound}`, e.g. in {case})")
    assert not missing, ("README's `Copying a function` must show these import lines:\n  "
                         + "\n  ".join(sorted(missing)))
