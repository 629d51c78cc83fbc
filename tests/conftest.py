import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
LDC = DATA / "ldc93s1"


@pytest.fixture
def ldc(tmp_path):
    """A writable copy of the LDC93S1 smoke-test files."""
    dst = tmp_path / "ldc93s1"
    shutil.copytree(LDC, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst
