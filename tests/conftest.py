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


TINY = ["common_voice_dir=", "train_files=data/tiny/train.csv", "dev_files=data/tiny/dev.csv",
        "test_files=data/tiny/test.csv", "n_hidden=16", "epochs=1", "train_batch_size=1", "dev_batch_size=1",
        "test_batch_size=1", "report_count=1"]
MISSING_ROWS = 20000  # test.csv: over 1 MB, past Snakemake's default --max-checksum-file-size


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory):
    """A workflow folder after one real run of the whole chain on your-own-CSVs config TINY (`--config`):
    LDC93S1 in train/dev/test, plus 20,000 rows of missing audio in test.csv that validation drops."""
    from tests.workflow import snakemake, workdir

    wd = workdir(tmp_path_factory.mktemp("tiny"))
    tiny = wd / "data" / "tiny"
    tiny.mkdir()
    row = "../ldc93s1/LDC93S1.wav,93638,she had your dark suit in greasy wash water all year\n"
    header = "wav_filename,wav_filesize,transcript\n"
    for split in ("train", "dev"):
        (tiny / f"{split}.csv").write_text(header + row)
    (tiny / "test.csv").write_text(header + row + "".join(f"missing/clip{i:05d}.wav,32044,a clip that is not there\n"
                                                         for i in range(MISSING_ROWS)))
    snakemake(wd, "--cores", "2", "--config", *TINY)
    return wd
