"""Which package files a `dsflow` command runs: the import closure of its module, read from the source (`ast`,
nothing imported), so that each Snakemake rule lists exactly the code it runs as inputs (Snakemake does not
follow imports) and an edit of any of them makes that stage and what follows stale.

Imports inside functions count (they run too). The closure of a command is that of `dsflow.cli` (the entry point
every rule goes through) plus that of the command's module (dsflow.cli.COMMANDS).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = "dsflow"


@functools.lru_cache(maxsize=None)
def _imports(path: Path) -> frozenset[str]:
    """The dsflow modules that the file at `path` imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            found.add(node.module)
            # `from dsflow import x`: x is a module when a file x.py exists (else a name in __init__.py)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if (path.parent / f"{a.name}.py").is_file() and node.module == PACKAGE}
    return frozenset(found)


def _file(package_dir: Path, module: str) -> Path:
    parts = module.split(".")[1:]
    return package_dir.joinpath(*parts).with_suffix(".py") if parts else package_dir / "__init__.py"


def closure(package_dir: str | Path, *modules: str) -> list[str]:
    """The files (paths under `package_dir`, sorted) of `modules` and every dsflow module they import, transitively;
    the package's __init__.py is always in (importing any module runs it)."""
    package_dir = Path(package_dir)
    seen, todo = {PACKAGE}, [*modules]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _file(package_dir, module)
        if not path.is_file():
            raise FileNotFoundError(f"{module}: no {path}")
        todo += _imports(path)
    return sorted(str(_file(package_dir, m)) for m in seen)


def command_code(package_dir: str | Path, command: str) -> list[str]:
    """The files a `dsflow COMMAND` job runs (see the module docstring)."""
    from dsflow.cli import COMMANDS

    return closure(package_dir, f"{PACKAGE}.cli", COMMANDS[command])
