"""Outputs that appear complete or not at all: write under a temporary sibling name, then rename.

A killed job leaves at most a hidden `.NAME.*.part` / `.NAME.partial-*` / `.NAME.old-*` sibling, never a file or
folder under the real name that looks finished; the next write of NAME removes what a killed writer left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path


def remove_leftovers(path: Path) -> None:
    """The temporary siblings of `path` that a killed writer left (the outputs of one job are written by that
    job alone: Snakemake never runs two jobs for one output)."""
    for pattern in (f".{path.name}.*.part", f".{path.name}.partial-*", f".{path.name}.old-*"):
        for leftover in path.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """A temporary name next to `path` to write to; it becomes `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs):
    """open() a temporary file next to `path`; it becomes `path` only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode.replace("w", "x"), **kwargs) as f:
        yield f


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """A temporary sibling folder to build `path` in; it replaces `path` only when the block succeeds.

    An existing `path` stays untouched until the new one is complete; on failure the temporary
    folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should be an ordinary folder
    try:
        yield tmp
        if path.exists():  # a folder cannot be os.replace'd over a non-empty one: move the old one aside
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
