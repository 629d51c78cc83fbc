"""GPU jobs: Snakemake's `gpu` resource, one device per concurrent job, memory growth, threads for TensorFlow.

There is no GPU on the test machines: the device count is faked with DSFLOW_GPU_COUNT (the one mock, at the
GPU boundary); what is tested is which CUDA_VISIBLE_DEVICES each job gets, and when jobs run.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from dsflow import gpu
from tests.workflow import ROOT, snakemake, workdir

CLAIM = ("import os, sys; from dsflow import gpu; gpu.prepare(sys.argv[1], int(sys.argv[2])); "
         "print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')), os.environ['TF_FORCE_GPU_ALLOW_GROWTH'], flush=True); "
         "sys.stdin.read()")


def holder(env: dict, command: str = "train", gpus: int = 1) -> subprocess.Popen:
    """A process that runs gpu.prepare(command, gpus), prints its CUDA_VISIBLE_DEVICES and holds it until stdin
    closes."""
    return subprocess.Popen([sys.executable, "-c", CLAIM, command, str(gpus)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def release(p: subprocess.Popen) -> str:
    p.stdin.close()
    p.wait(timeout=30)
    return p.stderr.read()


@pytest.fixture
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID",
                                                            "TF_FORCE_GPU_ALLOW_GROWTH")}
    return dict(e, PYTHONPATH=str(ROOT / "src"), DSFLOW_GPU_COUNT="2", DSFLOW_GPU_LOCK_DIR=str(tmp_path / "locks"))


def test_concurrent_gpu_jobs_get_distinct_devices_and_a_third_waits(env):
    a, b = holder(env), holder(env)
    got = [a.stdout.readline().split()[0], b.stdout.readline().split()[0]]
    assert sorted(got) == ["'0'", "'1'"]
    c = holder(env)  # both GPUs held: it waits ...
    time.sleep(1.5)
    assert c.poll() is None
    release(a)  # ... until one is released, then gets that device
    assert c.stdout.readline().split()[0] == got[0]
    release(b)
    assert "all 2 GPUs are held by other jobs" in release(c)


def test_a_training_on_two_gpus_claims_two_and_holds_none_while_it_waits(env):
    """train_gpus=2 on a 3-GPU machine: a second such training waits for two free devices without taking the third,
    which a one-GPU job gets meanwhile."""
    env = dict(env, DSFLOW_GPU_COUNT="3")
    a = holder(env, "train", 2)
    assert a.stdout.readline().split()[0] == "'0,1'"
    b = holder(env, "train", 2)
    time.sleep(1.5)
    assert b.poll() is None  # waiting ...
    c = holder(env, "evaluate")
    assert c.stdout.readline().split()[0] == "'2'"  # ... holding none
    release(a)
    assert b.stdout.readline().split()[0] == "'0,1'"
    assert "waiting for 2 to be free" in release(b)
    release(c)


def test_memory_growth_is_on_and_a_given_device_or_slurm_allocation_is_kept(env):
    p = holder(env)
    assert p.stdout.readline().split() == ["'0'", "true"]  # TF_FORCE_GPU_ALLOW_GROWTH for every job
    release(p)
    for extra in ({"CUDA_VISIBLE_DEVICES": "3"}, {"SLURM_JOB_ID": "17"}):
        p = holder(dict(env, **extra))
        assert p.stdout.readline().split()[0] == repr(extra.get("CUDA_VISIBLE_DEVICES"))
        release(p)
    p = holder(dict(env, TF_FORCE_GPU_ALLOW_GROWTH="false"))
    assert p.stdout.readline().split()[1] == "false"
    release(p)


def test_one_gpu_is_left_alone_and_cpu_jobs_take_no_lock(env):
    p = holder(dict(env, DSFLOW_GPU_COUNT="1"))
    assert p.stdout.readline().split()[0] == "None"  # a single GPU: nothing to choose
    release(p)
    q = holder(env, "train")
    assert q.stdout.readline().split()[0] == "'0'"
    held = [holder(env, command) for command in ("validate", "features")]  # no TensorFlow: left as they are
    assert [x.stdout.readline().split()[0] for x in held] == ["None", "None"]
    for x in (q, *held):
        release(x)


def test_a_lock_file_that_cannot_be_opened_is_a_clear_error(env, tmp_path, monkeypatch):
    monkeypatch.setenv("DSFLOW_GPU_COUNT", "2")
    monkeypatch.setenv("DSFLOW_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "gpu-0.lock").mkdir()  # not a file
    with pytest.raises(gpu.UserError, match=r"gpu-0\.lock.*DSFLOW_GPU_LOCK_DIR"):
        gpu.claim_device()


def test_threads_reach_tensorflows_pools():
    code = ("from dsflow import gpu; tf = gpu.init_tensorflow(3); "
            "print(tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["3", "2"]


# --------------------------------------------------------------------------- through Snakemake

TWO_TRAININGS = '''include: "Snakefile"


use rule train as train_b with:
    output:
        directory("results/checkpoints_b"),
    log:
        f"{LOGS}/train_b.log",
    params:
        work="results/work/train_b",
        flags=dsflags.render("train", dict(config, n_hidden=12)),
'''
CONFIG = ["--config", "train_files=data/ldc93s1/ldc93s1.csv",
          "dev_files=data/ldc93s1/ldc93s1.csv", "n_hidden=16", "epochs=2", "train_batch_size=1", "dev_batch_size=1"]


def job_times(wd, output: str) -> tuple[float, float]:
    """(start, end) of the job that made `output`, from Snakemake's own metadata."""
    meta = json.loads((wd / ".snakemake/metadata" / base64.b64encode(output.encode()).decode()).read_text())
    return meta["starttime"], meta["endtime"]


def claimed(wd, log: str) -> str:
    return re.search(r"GPU: device (\d) of 2 claimed", (wd / "results/logs" / log).read_text())[1]


@pytest.mark.slow
def test_gpu_resource_serializes_two_trainings_and_gpu_2_runs_them_on_two_devices(tmp_path, monkeypatch):
    """Two training runs of different configs in one invocation (a test-only Snakefile adds the second)."""
    wd = workdir(tmp_path)
    (wd / "Snakefile.two").write_text(TWO_TRAININGS)
    monkeypatch.setenv("DSFLOW_GPU_COUNT", "2")
    monkeypatch.setenv("DSFLOW_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = ["-s", "Snakefile.two", "--cores", "4", "--set-threads", "train=1", "train_b=1", *CONFIG, "--",
            "results/checkpoints", "results/checkpoints_b"]

    snakemake(wd, "--resources", "gpu=1", *args)
    (a0, a1), (b0, b1) = job_times(wd, "results/checkpoints"), job_times(wd, "results/checkpoints_b")
    assert a1 <= b0 or b1 <= a0, "two gpu=1 jobs overlapped under --resources gpu=1"
    assert claimed(wd, "train.log") == claimed(wd, "train_b.log") == "0"  # one after the other: both on GPU 0
    log = (wd / "results/logs/train_b.log").read_text()
    assert re.search(r"TensorFlow \S+: 1 intra-op / 1 inter-op threads", log)  # --set-threads reached TF

    shutil.rmtree(wd / "results/work")  # train again from scratch, now with two GPUs to share
    snakemake(wd, "--resources", "gpu=2", "--forcerun", "train", "train_b", *args)
    (a0, a1), (b0, b1) = job_times(wd, "results/checkpoints"), job_times(wd, "results/checkpoints_b")
    assert a0 < b1 and b0 < a1, "with gpu=2 the two trainings should have run at the same time"
    assert {claimed(wd, "train.log"), claimed(wd, "train_b.log")} == {"0", "1"}
