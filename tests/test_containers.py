"""The container recipes in containers/, checked as far as a machine without a container engine allows.

No Docker engine, Apptainer or registry is usable here (tests/test_image.py builds the Dockerfile with buildah
and runs the workflow in the image). Checked here: the Dockerfile with hadolint (a real linter); the Apptainer
definition's structure (no linter exists for it); that both recipes install everything through scripts/setup.sh,
so their Python packages are pyproject.toml's pins and their apt packages setup.sh's; that the files they copy are
enough to build the package; and that the Snakefile's `container:` directives resolve to the configured
images per job (a dry run with `--sdm apptainer` against a stand-in `apptainer --version`).
"""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.workflow import ROOT, snakemake, workdir

DOCKERFILE = ROOT / "containers" / "Dockerfile"
DEF = ROOT / "containers" / "dsflow.def"
SETUP = ROOT / "scripts" / "setup.sh"
APPTAINER_SECTIONS = {"arguments", "setup", "files", "post", "environment", "runscript", "startscript", "test",
                      "labels", "help", "app"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)
            if not m[0].lstrip().startswith("#")]


def definition() -> tuple[dict, dict[str, str]]:
    """The Apptainer definition: (header keywords, section name -> body)."""
    text = DEF.read_text()
    header_text, _, rest = text.partition("\n%")
    header = dict(m.groups() for m in re.finditer(r"^(\w+):\s*(\S+)\s*$", header_text, re.M))
    sections = dict((m[1], m[2]) for m in re.finditer(r"^%(\w+)[^\n]*\n(.*?)(?=^%|\Z)", "%" + rest, re.M | re.S))
    return header, sections


def test_hadolint_passes_the_dockerfile():
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{Path(sys.executable).parent}")
    hadolint = hadolint or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it is in pyproject.toml's dev extra (bash scripts/setup.sh)"
    done = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_apptainer_definition_is_well_formed_and_builds_like_the_dockerfile():
    header, sections = definition()
    assert header["Bootstrap"] == "docker"
    # The same base image: the Dockerfile's is the build argument BASE, whose default is the definition's.
    args = dict(arg.split("=", 1) for op, arg in dockerfile_instructions() if op == "ARG" and "=" in arg)
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], arg) for op, arg in dockerfile_instructions() if op == "FROM"]
    assert froms == [header["From"]]
    assert set(sections) <= APPTAINER_SECTIONS, set(sections) - APPTAINER_SECTIONS
    assert {"files", "post", "environment", "test"} <= set(sections)
    # %files copies what the Dockerfile COPYs, into the same folder.
    copied = {src.rstrip("/") for op, arg in dockerfile_instructions() if op == "COPY" for src in arg.split()[:-1]}
    files = dict(line.split() for line in sections["files"].strip().splitlines())
    assert set(files) == copied and all(dst == f"/opt/dsflow/{src}" for src, dst in files.items())
    assert all((ROOT / src).exists() for src in files)
    # The build argument reaches setup.sh; the default is the CPU build, as in the Dockerfile.
    assert re.search(r"^\s*DSFLOW_TF=cpu\s*$", sections["arguments"], re.M)
    assert "ARG DSFLOW_TF=cpu" in DOCKERFILE.read_text()
    assert re.search(r"DSFLOW_TF=\{\{ DSFLOW_TF \}\} bash scripts/setup.sh", sections["post"])
    env = dict(re.findall(r"export (\w+)=(\S+)", sections["environment"]))
    docker_env = dict(re.findall(r"(\w+)=(\S+)", " ".join(arg for op, arg in dockerfile_instructions() if op == "ENV")))
    assert env == docker_env


def setup_sh_packages() -> tuple[set[str], set[str]]:
    """(commands setup.sh makes sure of, apt packages it installs)."""
    text = SETUP.read_text()
    pairs = re.search(r"for pair in ([^;]+);", text)[1].split()
    commands = {p.split(":")[0] for p in pairs}
    packages = {p.split(":")[1] for p in pairs} | set(re.findall(r"need\+=\(([\w.-]+)\)", text))
    return commands, packages


def test_recipes_install_only_through_setup_sh_so_pins_and_apt_packages_are_the_same():
    for recipe in (DOCKERFILE, DEF):
        text = recipe.read_text()
        assert "bash scripts/setup.sh" in text
        # Nothing installed beside it: pyproject.toml's pins and setup.sh's apt list are the only sources.
        assert not re.search(r"pip3? install|apt-get install|apt install|conda install|mamba install", text), recipe
    # setup.sh installs the package with the extra named by DSFLOW_TF, and both extras pin TensorFlow 2.21.0.
    assert re.search(r'pip install -q -e "\.\[\$tf,', SETUP.read_text())
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cpu"] == ["tensorflow-cpu==2.21.0"] and extras["gpu"] == ["tensorflow[and-cuda]==2.21.0"]
    # The tools the image test checks are the ones setup.sh installs (sox, soxi, ffmpeg, lame, espeak-ng, and
    # KenLM's lmplz and build_binary, which it builds into .venv/bin, on the image's PATH).
    commands, packages = setup_sh_packages()
    kenlm = set(re.findall(r"\.venv/bin/(lmplz|build_binary)", SETUP.read_text()))
    tested = set(re.search(r"for tool in ([^;]+);", definition()[1]["test"])[1].split())
    assert tested == commands | kenlm and kenlm == {"lmplz", "build_binary"}
    assert {"sox", "libsox-fmt-mp3", "ffmpeg", "espeak-ng", "lame"} <= packages


def test_the_copied_files_are_enough_to_build_the_package(tmp_path):
    """Build the wheel from only what the recipes copy (the Dockerfile's COPY, minus its .dockerignore)."""
    ignore = (ROOT / "containers" / "Dockerfile.dockerignore").read_text()
    assert re.search(r"^\*$", ignore, re.M)  # everything is excluded but what is listed
    for op, arg in dockerfile_instructions():
        if op == "COPY":
            for src in arg.split()[:-1]:
                assert re.search(rf"^!{re.escape(src)}$", ignore, re.M), f"{src} is copied but .dockerignore drops it"
                path = ROOT / src
                if path.is_dir():
                    shutil.copytree(path, tmp_path / src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                else:
                    shutil.copy(path, tmp_path / src)
    # As in the image build (pip fetches the build backend pyproject.toml asks for from PyPI).
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path / "dist"), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "dist").glob("dsflow-*.whl"))


@pytest.fixture
def fake_apptainer(tmp_path, monkeypatch):
    """A stand-in `apptainer` that only answers --version (no container engine here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text("#!/bin/sh\necho 'apptainer version 1.3.4'\n")
    (bin_dir / "apptainer").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:{__import__('os').environ['PATH']}")


def pulled(out: str) -> set[str]:
    return set(re.findall(r"Singularity image (\S+) will be pulled", out))


def test_container_directives_resolve_to_the_configured_images(tmp_path, fake_apptainer):
    wd = workdir(tmp_path)
    cpu, gpu = "docker://dsflow/dsflow:0.1.0-cpu", "docker://dsflow/dsflow:0.1.0-gpu"
    assert pulled(snakemake(wd, "-n", "--sdm", "apptainer").stdout) == {cpu, gpu}
    # Only CPU stages: only the CPU image (the GPU image is the train/evaluate rules').
    assert pulled(snakemake(wd, "-n", "--sdm", "apptainer", "--", "results/features/test").stdout) == {cpu}
    assert pulled(snakemake(wd, "-n", "--sdm", "apptainer", "--", "results/checkpoints").stdout) == {cpu, gpu}
    out = snakemake(wd, "-n", "--sdm", "apptainer", "--config", "container_image=docker://me/cpu:1",
                    "container_image_gpu=dsflow-gpu.sif").stdout  # a local .sif is used as it is, never pulled
    assert pulled(out) == {"docker://me/cpu:1"}
    assert "Using workflow specific profile" in out  # the default profile does not set --sdm: runs stay local


@pytest.mark.slow
def test_each_job_recorded_its_image(tiny_chain):
    """Snakemake's metadata of the tiny chain (run without --sdm) names the image each job would run in."""
    import base64
    import json

    def image(output: str) -> str:
        meta = tiny_chain / ".snakemake/metadata" / base64.b64encode(output.encode()).decode()
        return json.loads(meta.read_text())["container_img_url"]

    assert image("results/checkpoints") == image("results/evaluate/metrics.json") == "docker://dsflow/dsflow:0.1.0-gpu"
    assert image("results/validate/test.csv") == image("results/report/training.png") == "docker://dsflow/dsflow:0.1.0-cpu"
