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


TINY = ["--configfile", ".test/config-tiny.yaml"]  # the smallest whole chain on your own CSVs
SMOKE = ["--configfile", ".test/config-smoke.yaml"]  # DeepSpeech's LDC93S1 smoke test
MISSING_ROWS = 20000  # test.csv: over 1 MB, past Snakemake's default --max-checksum-file-size


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory):
    """A workflow folder after one real run of the whole chain on your-own-CSVs config TINY (.test/config-tiny.yaml):
    LDC93S1 in train/dev/test, plus 20,000 rows of missing audio in test.csv that validation drops."""
    from tests.workflow import snakemake, workdir

    wd = workdir(tmp_path_factory.mktemp("tiny"))
    with open(wd / ".test/tiny/test.csv", "a") as f:
        f.write("".join(f"missing/clip{i:05d}.wav,32044,a clip that is not there\n" for i in range(MISSING_ROWS)))
    snakemake(wd, "--cores", "2", *TINY)
    return wd
