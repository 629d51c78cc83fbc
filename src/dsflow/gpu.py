"""Devices and threads for the TensorFlow jobs: one GPU per concurrent GPU job, memory taken as needed.

Snakemake's `gpu` resource caps how many GPU jobs run at once (`--resources gpu=2`), but it never says WHICH
device a job gets, and TensorFlow maps every visible GPU and reserves nearly all of its memory. So, before
TensorFlow is imported, `prepare(command)` (called by the CLI for every command):
  - sets TF_FORCE_GPU_ALLOW_GROWTH=true (unless set): TensorFlow takes GPU memory as it needs it;
  - for a GPU command (train, evaluate, export, lm-optimize) on a machine with several GPUs, claims a free one (train:
    `train_gpus` of them) with a lock file each (DSFLOW_GPU_LOCK_DIR, default $TMPDIR/dsflow-gpu-locks/gpu-N.lock,
    held until the process exits, whatever kills it) and sets CUDA_VISIBLE_DEVICES to them; if too few are free it
    waits. A
    CUDA_VISIBLE_DEVICES that is already set (by you, or by SLURM for a job's allocation) is left alone, and
    so is a job under SLURM (SLURM_JOB_ID): its allocation decides.
The CPU stages (validate, features, ...) never import TensorFlow, so they cannot take GPU memory.
GPUs are counted from /proc/driver/nvidia/gpus (the NVIDIA driver's list); DSFLOW_GPU_COUNT overrides the
count (the tests fake a multi-GPU machine with it). `init_tensorflow(threads)` then imports TensorFlow with
Snakemake's `{threads}` for its intra-op pool and logs what the job got.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

from dsflow import UserError
from dsflow.log import log

GPU_COMMANDS = {"train", "evaluate", "export", "transcribe", "lm-optimize", "infer"}
_held: list = []  # the claimed device's open lock file: the claim lasts as long as this process


def gpu_count() -> int:
    fake = os.environ.get("DSFLOW_GPU_COUNT")
    if fake:
        return int(fake)
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def lock_dir() -> Path:
    return Path(os.environ.get("DSFLOW_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "dsflow-gpu-locks")


def _try_lock(path: Path):
    try:
        f = open(path, "a")
    except OSError as e:
        raise UserError(f"cannot open the GPU lock file {path}: {e}; set DSFLOW_GPU_LOCK_DIR to a folder you "
                        "can write (the same for every job of the machine)") from e
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def claim_device(poll_seconds: float = 1.0, count: int = 1) -> str | None:
    """Claim `count` free GPUs of a multi-GPU machine for this process (CUDA_VISIBLE_DEVICES); None: left as it
    was."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        log.info("GPU: CUDA_VISIBLE_DEVICES=%r was set for this job; using it", os.environ["CUDA_VISIBLE_DEVICES"])
        return None
    if os.environ.get("SLURM_JOB_ID"):
        return None  # SLURM's allocation decides (it sets CUDA_VISIBLE_DEVICES for a job with GPUs)
    n = gpu_count()
    if n < 2:
        return None
    if count > n:
        log.warning("GPU: %d GPUs asked for, this machine has %d: claiming them all", count, n)
        count = n
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    waited = time.monotonic()
    warned = False
    while True:
        got = []
        for i in range(n):
            f = _try_lock(folder / f"gpu-{i}.lock")
            if f:
                got.append((i, f))
                if len(got) == count:
                    _held.extend(f for _, f in got)
                    devices = ",".join(str(i) for i, _ in got)
                    os.environ["CUDA_VISIBLE_DEVICES"] = devices
                    log.info("GPU: device%s %s of %d claimed (lock%s %s%s)", "s" if count > 1 else "", devices, n,
                             "s" if count > 1 else "", ", ".join(f.name for _, f in got),
                             f", after waiting {time.monotonic() - waited:.0f} s" if warned else "")
                    return devices
        for _, f in got:  # too few free: none held while waiting
            f.close()
        if not warned:
            log.warning("GPU: %s held by other jobs (locks in %s); waiting for %s to be free "
                        "(is --resources gpu=N larger than the number of GPUs?)",
                        f"all {n} GPUs are" if count == 1 else f"{n - len(got)} of {n} GPUs are", folder,
                        "one" if count == 1 else f"{count}")
            warned = True
        time.sleep(poll_seconds)


def prepare(command: str, gpus: int = 1) -> None:
    """Set up this process's devices for `command` (before TensorFlow is imported): `gpus` of them."""
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    if command in GPU_COMMANDS:
        claim_device(count=gpus)


def init_tensorflow(threads: int):
    """Import TensorFlow with `threads` intra-op threads (0: its default) and log the job's devices."""
    import tensorflow as tf

    if threads > 0:  # before any op runs
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        except RuntimeError:  # a process that already ran TensorFlow ops (tests)
            log.warning("--threads %d ignored: TensorFlow is already initialized in this process", threads)
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    log.info("TensorFlow %s: %d intra-op / %d inter-op threads (0: all cores); GPUs: %s "
             "(CUDA_VISIBLE_DEVICES=%s, TF_FORCE_GPU_ALLOW_GROWTH=%s)", tf.__version__,
             tf.config.threading.get_intra_op_parallelism_threads(),
             tf.config.threading.get_inter_op_parallelism_threads(), ", ".join(gpus) or "none",
             os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH"))
    return tf
