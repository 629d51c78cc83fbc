"""The CPU job image, built here and used: scripts/build_image.sh builds containers/Dockerfile with buildah on a
Debian bookworm debootstrapped from Debian's archive (no registry is reachable), and the tiny chain runs inside it
(`buildah run --isolation chroot`, its folder mounted) with the same results as on the host.

The image run sees its folder at the host run's path, so outputs that record paths (the test report's wav
names) can be compared byte for byte. Both runs use TensorFlow 2.21.0 and the same NumPy (pyproject.toml's pins;
its unpinned versions resolve alike when the venv and the image are built on the same day, as in CI) on the same
CPU, and training is deterministic: the checkpoints, the test report and the exported model come out
bit-identical, though the host's Python and the image's (Debian's 3.11.2) differ. Only what records times, host
names or ids differs (epoch seconds, logs, TensorBoard event files, the SavedModel's fingerprint, the audio
fingerprint cache). A failure message lists both sides' numeric packages, which an older venv may not share.
Runs as root (buildah installs and builds); in CI's default run, `-m "not container"` leaves it out.
"""

import json
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY
from tests.workflow import ROOT

pytestmark = [pytest.mark.container, pytest.mark.slow]

IMAGE = "dsflow/dsflow:0.1.0-cpu"
# The packages whose builds decide the numbers (TensorFlow's kernels, NumPy's, the MFCCs' FFT).
NUMERIC = ["tensorflow-cpu", "keras", "numpy", "pyfftw", "soundfile"]


@pytest.fixture(scope="module")
def image():
    if os.geteuid() != 0:
        pytest.skip("installs buildah and builds the image: needs root")
    done = subprocess.run(["bash", str(ROOT / "scripts/build_image.sh"), IMAGE], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout
    return IMAGE


def in_image(image: str, *command: str, mounts: dict[Path, Path] | None = None, workdir: Path | None = None,
             timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command in a new container of the image, host folders mounted (host path -> container path)."""
    ctr = subprocess.run(["buildah", "from", "--pull=never", "--quiet", image], stdout=subprocess.PIPE, text=True,
                         check=True).stdout.strip()
    try:
        args = [f"--volume={src}:{dst}" for src, dst in (mounts or {}).items()]
        args += [f"--workingdir={workdir}"] if workdir else []
        return subprocess.run(["buildah", "run", "--isolation", "chroot", *args, ctr, "--", *command],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    finally:
        subprocess.run(["buildah", "rm", ctr], stdout=subprocess.DEVNULL, check=True)


def test_the_image_has_dsflow_its_tools_and_the_pinned_packages(image):
    script = ("import dsflow, sys, json; from importlib import metadata as m; "
              f"print(json.dumps([dsflow.__file__, sys.version_info[:2], {{p: m.version(p) for p in {NUMERIC}}}]))")
    done = in_image(image, "python", "-c", script)
    assert done.returncode == 0, done.stdout
    where, python, versions = json.loads(done.stdout.strip().splitlines()[-1])
    assert where == "/opt/dsflow/src/dsflow/__init__.py" and python >= [3, 11]
    assert versions["tensorflow-cpu"] == "2.21.0"
    # The system tools of setup.sh, and KenLM's, on the image's PATH (as the Apptainer definition's %test).
    tools = "for t in sox soxi ffmpeg lame espeak-ng lmplz build_binary dsflow snakemake; do command -v $t; done"
    done = in_image(image, "bash", "-c", tools)
    assert done.returncode == 0 and len(done.stdout.split()) == 9, done.stdout


def host_versions() -> dict[str, str]:
    return {p: metadata.version(p) for p in NUMERIC}


def test_the_tiny_chain_in_the_image_gives_the_host_s_checkpoints_and_report(image, tiny_chain, tmp_path):
    # The same inputs as the host's run (its folder without what the run wrote), at the host run's path.
    wd = tmp_path / "wf"
    shutil.copytree(tiny_chain, wd, ignore=lambda d, names: {"results", ".snakemake"} & set(names)
                    if Path(d) == tiny_chain else set())
    done = in_image(image, "snakemake", "--cores", "2", *TINY, mounts={wd: tiny_chain},
                    workdir=tiny_chain)
    assert done.returncode == 0, done.stdout
    host, img = tiny_chain / "results", wd / "results"
    versions = in_image(image, "python", "-c", f"from importlib import metadata as m; print({{p: m.version(p) "
                                               f"for p in {NUMERIC}}})").stdout.strip().splitlines()[-1]
    why = f"host {host_versions()}, image {versions}"  # a differing numeric build may explain a difference

    # The same checkpoint files, bit for bit (weights, optimizer state, alphabet, flags, features, run record),
    # but for metrics.csv's timings.
    names = sorted(p.name for p in (host / "checkpoints").iterdir())
    assert sorted(p.name for p in (img / "checkpoints").iterdir()) == names
    assert any(n.startswith("best_dev-") and ".data-" in n for n in names), names
    for name in set(names) - {"metrics.csv"}:
        assert (img / "checkpoints" / name).read_bytes() == (host / "checkpoints" / name).read_bytes(), (name, why)
    timings = ["epoch_seconds", "audio_seconds_per_second"]
    pd.testing.assert_frame_equal(pd.read_csv(img / "checkpoints/metrics.csv").drop(columns=timings),
                                  pd.read_csv(host / "checkpoints/metrics.csv").drop(columns=timings))

    # The same test report and metrics, and the same exported model.
    for name in ("evaluate/report.md", "evaluate/metrics.json", "evaluate/test_output.json",
                 "export/saved_model/saved_model.pb", "export/saved_model/variables/variables.data-00000-of-00001"):
        assert (img / name).read_bytes() == (host / name).read_bytes(), (name, why)
    assert sum(s["samples"] for s in json.loads((img / "evaluate/metrics.json").read_text()).values()) == 1
