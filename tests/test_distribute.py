"""Training on several devices and several workers (dsflow.distribute), on a CPU: DSFLOW_CPU_DEVICES=2 splits it
into two logical devices (the multi-device path with tf.distribute.MirroredStrategy, as on two GPUs), and two
worker processes on localhost with TF_CONFIG run MultiWorkerMirroredStrategy (as two nodes). What needs a GPU
(NCCL, float16 speed) is not run here; float16's loss scaling runs on the CPU (DSFLOW_MIXED_PRECISION=float16).
The SLURM launch (srun, the cluster from SLURM's environment) is tested in tests/test_slurm.py.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from dsflow import checkpoints, dataset, distribute, features  # noqa: E402
from dsflow.cli import main  # noqa: E402
from dsflow.decode import greedy  # noqa: E402
from dsflow.log import worker_logfile  # noqa: E402
from tests.conftest import LDC, ROOT  # noqa: E402
from tests.test_train import (LDC_TEXT, ldc_features, make_features, metrics, state_dir,  # noqa: E402, F401
                              train_args, variable)


def clips_of_many_lengths(tmp_path, fractions):
    """A features folder of LDC93S1's first `fraction`s (so that batches pad differently), transcripts cut alike."""
    d = tmp_path / "clips"
    d.mkdir()
    with wave.open(str(LDC / "LDC93S1.wav")) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    rows = ["wav_filename,wav_filesize,transcript"]
    words = LDC_TEXT.split()
    for i, f in enumerate(fractions):
        with wave.open(str(d / f"clip{i}.wav"), "wb") as out:
            out.setparams(params)
            out.writeframes(frames[:int(len(frames) // 2 * f) * 2])
        rows.append(f"clip{i}.wav,{(d / f'clip{i}.wav').stat().st_size},{' '.join(words[:int(len(words) * f)])}")
    (d / "clips.csv").write_text("\n".join(rows) + "\n")
    features.write_features(d / "clips.csv", d / "features", threads=2)
    return d / "features"


def dsflow(*args, env=None, **kwargs) -> subprocess.Popen:
    """`dsflow ARGS` in a new process (logical devices and a cluster are set up once per process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "dsflow", *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kwargs)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def two_workers(log, args, stop_at=None, timeout=900) -> list[int]:
    """`dsflow --log LOG ARGS` as the two workers of a cluster on localhost (TF_CONFIG); their exit codes. With
    `stop_at`, worker 1 gets a SIGTERM when its log (LOG.worker1) has that text."""
    workers = [f"localhost:{p}" for p in free_ports(2)]
    procs = [dsflow("--log", log, *args, env={"TF_CONFIG": json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}) for i in range(2)]
    try:
        if stop_at:
            worker1, deadline = Path(f"{log}.worker1"), time.monotonic() + timeout
            while not (worker1.exists() and stop_at in worker1.read_text()):
                assert procs[1].poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            procs[1].send_signal(signal.SIGTERM)
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()


def weights(prefix) -> dict:
    """The model's weights and the optimizer's state (Adam's slots, iterations, learning rate) in a checkpoint."""
    reader = tf.train.load_checkpoint(str(prefix))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k.startswith(("model/", "optim"))}


# ---------------------------------------------------------------------------------------------- the cluster

def test_the_cluster_of_a_slurm_step_and_each_workers_log():
    assert distribute.expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert distribute.expand_hostlist("n[1-2]-ib[3,5]") == ["n1-ib3", "n1-ib5", "n2-ib3", "n2-ib5"]
    assert distribute.tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    step = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NUM_TASKS": "3", "SLURM_STEP_NODELIST": "gpu[01-02]",
            "SLURM_STEP_TASKS_PER_NODE": "2,1", "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURMD_NODENAME": "gpu01"}
    base = 20000 + 4242 % 2000 * 16
    assert distribute.slurm_cluster(step) == {
        "cluster": {"worker": [f"gpu01:{base}", f"gpu01:{base + 1}", f"gpu02:{base}"]},
        "task": {"type": "worker", "index": 1}}
    assert distribute.slurm_cluster({**step, "SLURM_STEP_NUM_TASKS": "1"}) is None  # one task: one worker
    with pytest.raises(distribute.UserError, match="--distribution=block"):  # task 1 placed cyclically
        distribute.slurm_cluster({**step, "SLURMD_NODENAME": "gpu02", "SLURM_LOCALID": "0"})
    assert worker_logfile("train.log", step) == "train.log.worker1"
    assert worker_logfile("train.log", {**step, "SLURM_PROCID": "0"}) == "train.log"
    tf_config = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "worker", "index": 0}}
    assert worker_logfile("t.log", {"TF_CONFIG": json.dumps(tf_config)}) == "t.log.worker1"
    assert distribute.worker_index(tf_config) == 1


def test_the_train_rule_asks_slurm_for_nodes_and_starts_a_task_on_each():
    config = {"train_gpus": 4, "train_nodes": 1, "gpu_model": "a100"}
    assert distribute.rule_resources(config) == {"gpu": 4, "gpu_model": "a100"}
    resources = distribute.rule_resources({**config, "train_nodes": 2})
    assert resources == {"gres": "gpu:a100:4", "nodes": 2, "tasks": 2, "tasks_per_gpu": 0, "mpi": "srun"}
    assert distribute.launcher(type("R", (), resources), 8) == (
        "srun --nodes=2 --ntasks=2 --distribution=block --cpus-per-task=8 --kill-on-bad-exit=1 ")
    assert distribute.launcher(type("R", (), {"gpu": 4}), 8) == ""


def test_the_train_job_reserves_train_gpus_and_its_nodes(tmp_path):
    """What Snakemake (and through the SLURM plugin, sbatch) is asked for, and the command each way."""
    from tests.conftest import TINY
    from tests.workflow import snakemake, workdir

    wd = workdir(tmp_path)
    for extra, resources, launch in (
            ([], "gpu=1, gpu_model=", "dsflow --log"),
            (["train_gpus=4"], "gpu=4, gpu_model=", "dsflow --log"),
            (["train_gpus=4", "train_nodes=3", "gpu_model=h100"],
             "gres=gpu:h100:4, nodes=3, tasks=3, tasks_per_gpu=0, mpi=srun",
             "srun --nodes=3 --ntasks=3 --distribution=block --cpus-per-task=8 --kill-on-bad-exit=1 dsflow --log")):
        # (--resources gpu=8: the default profile's cap of 1 would cap the job's request too)
        out = snakemake(wd, "-n", "-p", "--cores", "8", "--resources", "gpu=8", *TINY, "--config", *extra, "--",
                        "results/checkpoints").stdout
        job = out[out.index("rule train:"):]
        assert re.search(rf"resources: tmpdir=\S+, {resources}\n", job), job[:1500]
        gpus = extra[0][-1] if extra else "1"
        assert re.search(rf"^Shell command: {re.escape(launch)} results/logs/train.log train .*--train_gpus {gpus}",
                         job, re.M), job[:3000]


# ---------------------------------------------------------------------------------------------- two devices

@pytest.mark.slow
def test_two_devices_with_batch_b_equal_one_device_with_batch_2b_and_resume_after_a_kill(tmp_path):
    """DeepSpeech's towers: per-device batches of consecutive utterances, gradients averaged. 8 clips of 8 lengths,
    dropout 0, 2 epochs: the 2-device run (batch 1 per device, killed after a mid-epoch checkpoint and resumed)
    has the per-epoch losses and the final weights and Adam state of one device with batch 2, to float rounding
    (the gradients add up in another order: measured within 7e-5 of each tensor's largest value)."""
    train = clips_of_many_lengths(tmp_path, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.55, 0.75])
    extra = ["--n_hidden", 32, "--epochs", 2, "--dropout_rate", 0, "--threads", 2]
    assert main(train_args(train, tmp_path / "one", tmp_path / "one_out", *extra, "--train_batch_size", 2,
                           dev=train)) == 0

    log, work, out = tmp_path / "two.log", tmp_path / "two", tmp_path / "two_out"
    args = train_args(train, work, out, *extra, "--train_batch_size", 1, "--checkpoint_secs", 1e-9, dev=train)
    killed = killer(r"saved \S+/train-6 \(epoch 1, step 2,", "--log", log, *args, env={distribute.CPU_DEVICES: "2"})
    assert killed.wait(timeout=300) == -9
    resumed = dsflow("--log", log, *args, env={distribute.CPU_DEVICES: "2"})
    assert resumed.wait(timeout=300) == 0
    text = log.read_text()
    assert text.count("training on 2 devices (tf.distribute.MirroredStrategy): /device:CPU:0, /device:CPU:1") == 2
    assert "resuming from" in text and ": epoch 1, step 2, global step 6" in text

    one, two = metrics(tmp_path / "one_out/metrics.csv"), metrics(out / "metrics.csv")
    assert [r["global_step"] for r in two] == [r["global_step"] for r in one] == ["4", "8"]  # 4 steps an epoch
    for a, b in zip(one, two):
        for key in ("train_loss", "dev_loss"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5), key
    a, b = weights(tf.train.latest_checkpoint(tmp_path / "one_out")), weights(tf.train.latest_checkpoint(out))
    assert a.keys() == b.keys() and len(a) == 12 * 3 + 2  # 6 layers' weights and biases, 2 Adam slots each
    for k in a:  # Adam's slots too: a sum instead of the mean of the devices' gradients would double m (Adam's
        # update itself hardly changes with the gradients' scale)
        assert np.abs(b[k] - a[k]).max() <= 1e-4 * np.abs(a[k]).max(), k
    assert b["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 8
    # The number of devices is part of the run's identity: the 2-device state is never resumed with one.
    assert json.loads((state_dir(work) / "run.json").read_text())["replicas"] == 2


def killer(pattern, *args, env):
    """tests.killer (SIGKILL at a logged line) in a new process."""
    return subprocess.Popen([sys.executable, "-m", "tests.killer", pattern, *map(str, args)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), **env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------- float16

def test_float16_loss_scale_is_saved_and_restored_with_the_checkpoint(tmp_path, monkeypatch, ldc_features):
    """automatic_mixed_precision on a GPU: float16 with a dynamic loss scale. Forced on the CPU here: the first
    steps' gradients overflow float16 at the initial scale 2^15, so the scale drops (updates skipped) and then
    counts good steps; a run resumed after 2 epochs ends with the loss scale, step count and weights of a run
    that did 4 epochs at once (a resumed run that started from the initial scale again would overflow again and
    skip other updates)."""
    monkeypatch.setenv(distribute.PRECISION, "float16")
    train = make_features(tmp_path, "train", [LDC_TEXT] * 4)
    extra = ["--n_hidden", 32, "--automatic_mixed_precision", "true", "--train_batch_size", 1]
    log = tmp_path / "train.log"
    assert main(["--log", str(log)] + train_args(train, tmp_path / "ref", tmp_path / "ref_out", *extra,
                                                 "--epochs", 4)) == 0
    assert main(["--log", str(log)] + train_args(train, tmp_path / "work", tmp_path / "out", *extra,
                                                 "--epochs", 2)) == 0
    half = tf.train.latest_checkpoint(tmp_path / "out")
    scale, good = variable(half, "loss_scale/scale"), variable(half, "loss_scale/good_steps")
    assert scale < 2.0**15 and good > 0  # lowered by overflows, then good steps counted: not the initial state
    assert main(["--log", str(log)] + train_args(train, tmp_path / "work", tmp_path / "out", *extra,
                                                 "--epochs", 4)) == 0
    text = log.read_text()
    assert "float16 gradients overflowed: update skipped, loss scale lowered to 16384" in text
    assert "resuming from" in text and ": epoch 2, step 0, global step 8" in text
    ref, resumed = tf.train.latest_checkpoint(tmp_path / "ref_out"), tf.train.latest_checkpoint(tmp_path / "out")
    for name in ("loss_scale/scale", "loss_scale/good_steps", "optimizer/_iterations"):
        assert variable(resumed, name) == variable(ref, name), name
    a, b = weights(ref), weights(resumed)
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    assert json.loads((state_dir(tmp_path / "work") / "run.json").read_text())["precision"] == "float16"


# ---------------------------------------------------------------------------------------------- two workers

@pytest.mark.slow
def test_two_workers_train_the_ldc93s1_smoke_test_to_its_exact_transcript(tmp_path, ldc_features):
    """DeepSpeech's smoke test (LDC93S1, n_hidden 100, lr 0.001, dropout 0.05, batch 1 per device, dev = the
    clip) on two worker processes (MultiWorkerMirroredStrategy over gRPC on localhost): each step gives each
    worker a copy of the clip. 20 copies make an epoch of 10 steps, so that the ~300 updates the transcript
    needs (measured: exact after 30 epochs, 'al year' after 20-25) are not 300 epochs of validation and
    checkpoints; a re-run with more epochs continues (both workers resume) until it is exact. The first run is
    stopped early: a SIGTERM to worker 1 alone stops both after the same step (the chief saves, then both exit
    143), and the next run resumes there. Only the chief (worker 0) writes the state and publishes."""
    train = make_features(tmp_path, "train", [LDC_TEXT] * 20)
    work, out, log = tmp_path / "work", tmp_path / "out", tmp_path / "train.log"

    def args(epochs):
        return ["train"] + train_args(train, work, out, "--n_hidden", 100, "--learning_rate", 0.001, "--dropout_rate",
                                      0.05, "--train_batch_size", 1, "--dev_batch_size", 1, "--epochs", epochs,
                                      "--threads", 1, dev=ldc_features)[1:]

    assert two_workers(log, args(30), stop_at="Training epoch 3...") == [143, 143]
    chief, worker1 = log.read_text(), (tmp_path / "train.log.worker1").read_text()
    assert "another worker was stopped" in chief and "stopped by signal 15" in chief and "signal 15:" in worker1
    saved = re.findall(r"saved \S+/train-(\d+) \(epoch (\d+), step (\d+),", chief)[-1]
    assert not out.exists() and int(saved[1]) >= 3  # in epoch 3, or later on a machine faster than the polling
    for epochs in range(30, 51, 5):
        assert two_workers(log, args(epochs)) == [0, 0]
        net = checkpoints.load_model(out)  # best_dev
        batch = next(iter(dataset.load(ldc_features, net.alphabet, 1, train=False)))
        text = greedy(net(batch["features"]).numpy()[:, 0], int(batch["feature_lengths"][0]), net.alphabet)
        if text == LDC_TEXT:
            break
    assert text == LDC_TEXT, f"after {epochs} epochs: {text!r}"
    chief, worker1 = log.read_text(), (tmp_path / "train.log.worker1").read_text()
    assert f"resuming from {work}" in chief and f"global step {saved[0]}," in chief.split("resuming from")[1]
    assert "worker 0 of 2" in chief and "worker 1 of 2" in worker1
    assert [p.name for p in work.iterdir()] == [state_dir(work).name]  # the chief's state folder only
    rows = metrics(out / "metrics.csv")
    assert len(rows) == epochs and rows[-1]["global_step"] == str(10 * epochs)
