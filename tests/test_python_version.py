"""Every module imports on the oldest Python that pyproject.toml declares (``requires-python``).

The syntax is checked by ``ast`` at that feature version; what is only evaluated at run time is checked by walking
the tree: PEP 604 unions (``X | None``, Python 3.10) in annotations of modules without ``from __future__ import
annotations``, in ``isinstance``/``issubclass`` and in type aliases, and ``zip(strict=...)``.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TYPE_NAMES = {"int", "str", "float", "bool", "bytes", "dict", "list", "tuple", "set", "type", "object"}


def declared_minimum() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    major, minor = re.search(r'requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', text).groups()
    return int(major), int(minor)


def modules() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.split()]


def _is_type(node: ast.AST) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_type(node.left) or _is_type(node.right)
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Subscript):
        return True  # list[int] | None
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    # Classes are CapWords; ALL_CAPS names are constants (os.O_WRONLY | os.O_CREAT is not a type).
    return name in TYPE_NAMES or (name[:1].isupper() and not name.isupper())


def _annotations(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    yield arg.annotation
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def runtime_problems(source: str, minimum: tuple[int, int]) -> list[str]:
    """What in ``source`` fails on Python ``minimum`` (empty: nothing found)."""
    try:
        tree = ast.parse(source, feature_version=minimum)
    except SyntaxError as err:
        return [f"line {err.lineno}: syntax of a later Python ({err.msg})"]
    if minimum >= (3, 10):
        return []
    problems = []
    future = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    if not future:
        for ann in _annotations(tree):
            if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(ann)):
                problems.append(f"line {ann.lineno}: X | Y annotation without from __future__ import annotations")
    annotation_nodes = {id(n) for ann in _annotations(tree) for n in ast.walk(ann)}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.BitOr)
            and id(node) not in annotation_nodes
            and _is_type(node)
        ):
            problems.append(f"line {node.lineno}: X | Y of types evaluated at run time")
        is_zip = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "zip"
        if is_zip and any(k.arg == "strict" for k in node.keywords):
            problems.append(f"line {node.lineno}: zip(strict=...)")
    return problems


def test_the_checker_finds_what_fails_on_python_3_9():
    assert runtime_problems("def f(x: int | None): pass\n", (3, 9)) != []
    assert runtime_problems("from __future__ import annotations\ndef f(x: int | None): pass\n", (3, 9)) == []
    assert runtime_problems("isinstance(m, nn.Conv2d | nn.Linear)\n", (3, 9)) != []
    assert runtime_problems("Alias = list[int] | None\n", (3, 9)) != []
    assert runtime_problems("flags = a | b\n", (3, 9)) == []
    assert runtime_problems("fd = os.open(p, os.O_WRONLY | os.O_CREAT)\n", (3, 9)) == []
    assert runtime_problems("match x:\n    case 1: pass\n", (3, 9)) != []
    assert runtime_problems("def f(x: int | None): pass\n", (3, 10)) == []


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_runs_on_the_declared_minimum_python(path):
    minimum = declared_minimum()
    assert runtime_problems(path.read_text(), minimum) == [], f"requires-python >={minimum[0]}.{minimum[1]}"
