"""Data-parallel training on every device of a job, DeepSpeech 0.9.3's towers with tf.distribute. This module owns
the devices a training runs on (the job's GPUs; without a GPU, DSFLOW_CPU_DEVICES=N logical CPU devices), the
cluster of a multi-worker job (TF_CONFIG, or built from SLURM's environment under `srun`), the strategy, which
process writes (the chief), the per-replica training step and its precision (float16 with a dynamic loss scale on
GPUs), and how the train rule asks SLURM for nodes and starts one task per node.

DeepSpeech's semantics: each device (replica) takes its own batch of `train_batch_size` utterances, consecutive
batches of the data order (a step of R replicas takes batches k*R ... k*R+R-1); each replica's loss is its batch
mean / R, and the optimizer sums the replicas' gradients: the average of the towers' gradients, one update per
step, so R devices with batch B equal one device with batch R*B (tests/test_distribute.py). An epoch has
floor(batches / R) steps (DeepSpeech's towers stopped at the first one without a batch); the dropout masks of
replica r in step s are seeded with (random_seed, s*R + r). The utterance losses of all replicas are gathered,
so a non-finite loss anywhere skips the update everywhere and every worker counts the same train loss.

One device, one process and float32/bfloat16 (the default): no strategy at all; the step is
dsflow.model.step_functions, exactly as before this module existed (bench/bench_distribute.py measures what the
strategy's step would cost there). float16 always takes the replica step (its loss scale), on one device under
TensorFlow's default strategy.

Several workers (MultiWorkerMirroredStrategy, one process per node, each with all its node's GPUs, or one CPU
replica): every worker reads (or augments) every batch and trains on its own; all run the same loop and take the
decisions from values they all share
(gathered losses; the chief's dev loss; a stop requested in any worker stops all after the same step). Only the
chief (worker 0) writes the state folder and publishes; another worker trains on a private copy of the state
(under $TMPDIR, removed when it exits) seeded from the chief's at start, so that DeepSpeech's plateau reload of
best_dev finds its own files. The work_dir must be on a filesystem all nodes share (the workflow's folder on a
cluster is). A worker's log is the job's log with `.workerN` appended (N > 0: dsflow.log.worker_logfile).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from dsflow import UserError
from dsflow.log import log

CPU_DEVICES = "DSFLOW_CPU_DEVICES"  # N: split the CPU into N logical devices (no GPU): the multi-device path on a CPU
PRECISION = "DSFLOW_MIXED_PRECISION"  # float16 | bfloat16: the dtype of automatic_mixed_precision, on any device
PORT_BASE = "DSFLOW_PORT_BASE"  # first port of a SLURM job's workers on each node (default: from the job ID)
LOSS_SCALE = 2.0**15  # the initial dynamic loss scale, halved on overflow, doubled after GROWTH_STEPS good steps
GROWTH_STEPS = 2000


# ---------------------------------------------------------------------------------------------- the cluster

def expand_hostlist(text: str) -> list[str]:
    """SLURM's compressed host list ('gpu[01-03,07],login1') as host names, in order."""
    hosts = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", text):  # the commas outside brackets separate
        choices = []
        for token in re.split(r"(\[[^\]]*\])", item):
            if not token.startswith("["):
                choices.append([token])
                continue
            values = []
            for r in token[1:-1].split(","):
                lo, _, hi = r.partition("-")
                values += [str(i).zfill(len(lo)) for i in range(int(lo), int(hi or lo) + 1)]
            choices.append(values)
        hosts += ["".join(p) for p in itertools.product(*choices)]
    return hosts


def tasks_per_node(text: str) -> list[int]:
    """SLURM's SLURM_STEP_TASKS_PER_NODE ('2(x3),1') as one count per node."""
    counts = []
    for item in text.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not m:
            raise UserError(f"cannot read SLURM's tasks per node {text!r}")
        counts += [int(m[1])] * int(m[2] or 1)
    return counts


def slurm_cluster(env=os.environ) -> dict | None:
    """TF_CONFIG for a task of a multi-task SLURM job step (`srun`: one worker per task), None for a single task.

    The workers are the step's tasks in SLURM's block order (task i on the node that runs tasks i, i+1, ...; the
    train rule's srun asks for --distribution=block), at port PORT_BASE + local task number on their node."""
    n = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if n < 2 or "SLURM_PROCID" not in env:
        return None
    nodes = expand_hostlist(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"])
    counts = tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env["SLURM_TASKS_PER_NODE"])
    base = int(env.get(PORT_BASE) or 20000 + int(env.get("SLURM_JOB_ID") or 0) % 2000 * 16)
    workers = [f"{host}:{base + i}" for host, k in zip(nodes, counts) for i in range(k)]
    index = int(env["SLURM_PROCID"])
    if len(workers) != n:
        raise UserError(f"SLURM step of {n} tasks, but its nodes {nodes} and tasks per node {counts} give "
                        f"{len(workers)}")
    me = f"{env.get('SLURMD_NODENAME') or socket.gethostname()}:{base + int(env.get('SLURM_LOCALID') or 0)}"
    if workers[index] != me:
        raise UserError(f"SLURM task {index} runs as {me}, not as {workers[index]} of its block distribution: "
                        "launch training with `srun --distribution=block` (the train rule does)")
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def cluster(env=os.environ) -> dict | None:
    """The multi-worker cluster this process belongs to: TF_CONFIG as set, else one from SLURM; None: one worker."""
    if env.get("TF_CONFIG"):
        spec = json.loads(env["TF_CONFIG"])
        if sum(len(v) for v in spec.get("cluster", {}).values()) > 1:
            return spec
        return None
    return slurm_cluster(env)


def worker_index(spec: dict | None) -> int:
    """A worker's number (0: the chief). MultiWorkerMirroredStrategy's order: the `chief` task, then the workers."""
    if spec is None:
        return 0
    task = spec["task"]
    if task["type"] == "chief":
        return 0
    return int(task["index"]) + (1 if spec["cluster"].get("chief") else 0)


# ---------------------------------------------------------------------------------------------- the train rule

def rule_resources(config: dict) -> dict:
    """The train rule's resources: `train_gpus` GPUs (`gpu`, sbatch --gpus) on one node; for `train_nodes` > 1 one
    task per node with `train_gpus` GPUs each (gres=gpu:[MODEL:]K, --nodes, --ntasks; `mpi` makes the SLURM
    plugin leave the launch to the rule's srun)."""
    gpus, nodes, model = config["train_gpus"], config["train_nodes"], config["gpu_model"]
    if nodes == 1:
        return {"gpu": gpus, "gpu_model": model}
    return {"gres": f"gpu:{model + ':' if model else ''}{gpus}", "nodes": nodes, "tasks": nodes, "tasks_per_gpu": 0,
            "mpi": "srun"}


def launcher(resources, threads: int) -> str:
    """The command prefix that starts the train rule's tasks: '' for one; srun, one task per node, for several."""
    tasks = int(getattr(resources, "tasks", 1) or 1)
    if tasks < 2:
        return ""
    nodes = int(getattr(resources, "nodes", tasks) or tasks)
    return (f"srun --nodes={nodes} --ntasks={tasks} --distribution=block --cpus-per-task={threads} "
            "--kill-on-bad-exit=1 ")


# ---------------------------------------------------------------------------------------------- the devices

def _inputs(batch):
    return batch["features"], batch["feature_lengths"], batch["labels"], batch["label_lengths"]


class Replicas:
    """The devices (and workers) one training step runs on, and the steps on them.

    strategy: None (one device, one worker) or a tf.distribute strategy; n: replicas in a step (all workers);
    local: this worker's replicas; worker, workers: this worker's number and the count; chief: worker 0.
    """

    def __init__(self, strategy=None, worker: int = 0, workers: int = 1):
        import tensorflow as tf

        self.tf, self.strategy = tf, strategy
        self.n = strategy.num_replicas_in_sync if strategy else 1
        self.local = len(strategy.extended.worker_devices) if strategy else 1
        self.worker, self.workers, self.chief = worker, workers, worker == 0
        self.first = worker * self.local  # the global number of this worker's first replica
        self._agree = None

    @classmethod
    def for_training(cls, train_gpus: int = 1) -> "Replicas":
        """Every device this job was given: its GPUs (else DSFLOW_CPU_DEVICES logical CPUs), and every worker of
        a multi-worker job. Call before TensorFlow runs any op."""
        import tensorflow as tf

        spec = cluster()
        gpus = tf.config.list_physical_devices("GPU")
        try:
            cpus = int(os.environ.get(CPU_DEVICES) or 1)
        except ValueError:
            raise UserError(f"{CPU_DEVICES}={os.environ[CPU_DEVICES]!r}: expected a number of devices") from None
        if cpus > 1 and gpus:
            log.warning("%s=%d ignored: training uses the job's %d GPUs", CPU_DEVICES, cpus, len(gpus))
        elif cpus > 1:
            host = tf.config.list_physical_devices("CPU")[0]
            try:
                tf.config.set_logical_device_configuration(host, [tf.config.LogicalDeviceConfiguration()] * cpus)
            except RuntimeError:
                raise UserError(f"{CPU_DEVICES}={cpus}: TensorFlow already runs in this process; set it before "
                                "`dsflow train` starts") from None
        if gpus and len(gpus) != train_gpus:
            log.warning("train_gpus is %d but this job sees %d GPUs (CUDA_VISIBLE_DEVICES=%s): training uses all %d",
                        train_gpus, len(gpus), os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), len(gpus))
        if spec is not None:
            if cpus > 1 and not gpus:
                log.warning("%s=%d: a worker of a multi-worker job has one CPU replica", CPU_DEVICES, cpus)
            os.environ["TF_CONFIG"] = json.dumps(spec)
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            workers = sum(len(v) for k, v in spec["cluster"].items() if k in ("chief", "worker"))
            me = cls(strategy, worker_index(spec), workers)
            log.info("worker %d of %d (%s; the chief writes): %d replicas in all, %d here (%s)", me.worker, workers,
                     ", ".join(spec["cluster"].get("chief", []) + spec["cluster"]["worker"]), me.n, me.local,
                     ", ".join(strategy.extended.worker_devices))
            return me
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices and cpus > 1:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(devices) < 2:
            log.info("training on one device (%s)", devices[0] if devices else "the CPU")
            return cls()
        strategy = tf.distribute.MirroredStrategy(devices)
        log.info("training on %d devices (tf.distribute.MirroredStrategy): %s; train_batch_size is per device",
                 len(devices), ", ".join(devices))
        return cls(strategy)

    def scope(self):
        """Where the model, optimizer and loss scale are created (their variables mirrored on every replica)."""
        import contextlib

        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    def compute_dtype(self, mixed_precision: bool):
        """float32; with automatic_mixed_precision float16 on GPUs (with a loss scale), bfloat16 on CPUs, or the
        dtype DSFLOW_MIXED_PRECISION names (float16 on a CPU: the GPU path, for tests)."""
        tf = self.tf
        if not mixed_precision:
            return tf.float32
        forced = os.environ.get(PRECISION)
        if forced:
            if forced not in ("float16", "bfloat16"):
                raise UserError(f"{PRECISION}={forced!r}: expected float16 or bfloat16")
            return tf.as_dtype(forced)
        return tf.float16 if tf.config.list_physical_devices("GPU") else tf.bfloat16

    def loss_scale(self, dtype) -> dict:
        """{'loss_scale': state} for float16 (saved with the checkpoint), else {}: a dynamic loss scale
        (`scale`, halved when a step's gradients overflow, which skips that update; doubled after GROWTH_STEPS
        good steps, counted in `good_steps`)."""
        tf = self.tf
        if dtype != tf.float16:
            return {}
        with self.scope():
            state = tf.Module(name="loss_scale")
            state.scale = tf.Variable(LOSS_SCALE, dtype=tf.float32, trainable=False, name="scale")
            state.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")
        return {"loss_scale": state}

    def work_dir(self, work_dir: str, name: str, fresh: bool) -> str:
        """The chief's --work_dir; for another worker a private copy of the state folder `name` (see the module
        docstring), nothing copied when `fresh` (load_train init)."""
        if self.chief:
            return work_dir
        private = Path(tempfile.mkdtemp(prefix=f"dsflow-worker{self.worker}-"))
        atexit.register(shutil.rmtree, private, True)
        src, dst = Path(work_dir) / name, private / name
        if not fresh and src.is_dir():
            _copy_state(src, dst)
        log.info("worker %d: private state folder %s (the chief's: %s)", self.worker, dst, src)
        return str(private)

    def groups(self, data):
        """The batches of `data` in steps: lists of n consecutive batches (a last incomplete step is dropped)."""
        it = iter(data)
        while True:
            group = list(itertools.islice(it, self.n))
            if len(group) < self.n:
                return
            yield group

    def barrier(self) -> None:
        """Wait until every worker is here (a stopped worker exits after the chief has saved: srun's
        --kill-on-bad-exit ends the whole step at the first worker that exits with 128 + signal)."""
        self.agree(0.0)

    def agree(self, value: float) -> float:
        """The chief's `value`, on every worker (the dev loss: every decision of the schedule is the same)."""
        if self.workers == 1:
            return value
        tf, strategy = self.tf, self.strategy
        if self._agree is None:
            def chief_value(x):
                ctx = tf.distribute.get_replica_context()
                mine = tf.where(tf.equal(ctx.replica_id_in_sync_group, 0), x, tf.zeros_like(x))
                return ctx.all_reduce(tf.distribute.ReduceOp.SUM, mine)

            self._agree = tf.function(lambda x: strategy.run(chief_value, args=(x,)))
        out = self._agree(tf.constant(value, tf.float64))
        return float(strategy.experimental_local_results(out)[0].numpy())

    # -- the steps

    def step_functions(self, net, opt, rates, dtype, loss_scale=None):
        """gradients(group, seed, stop) -> (losses, update, stop), apply(update), evaluate(batch...) -> losses.

        group: the step's batches (n of them; this worker uses its own); seed: int64 [2] (random_seed, global
        step); stop: this worker wants to stop. losses: the utterance losses of the whole group (numpy), update:
        what apply needs, stop: some worker wants to stop. evaluate runs on one device."""
        from dsflow import model

        plain_gradients, plain_apply, evaluate = model.step_functions(net, opt, rates, dtype)
        if self.strategy is None and loss_scale is None:  # one device: the single-device step, as it always was
            def gradients(group, seed, stop):
                losses, grads = plain_gradients(*_inputs(group[0]), seed)
                return losses.numpy(), grads, stop

            return gradients, plain_apply, evaluate
        return (*self._replica_steps(net, opt, rates, dtype, loss_scale), evaluate)

    def _replica_steps(self, net, opt, rates, dtype, loss_scale):
        from dsflow import model

        tf = self.tf
        strategy = self.strategy or tf.distribute.get_strategy()
        n, first, variables = self.n, self.first, net.trainable_variables
        spec = (tf.TensorSpec([None, None, model.N_INPUT], tf.float32), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32))
        SUM = tf.distribute.ReduceOp.SUM

        def replica_step(batch, seed, stop):
            features, feature_lengths, labels, label_lengths = batch
            ctx = tf.distribute.get_replica_context()
            replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
            with tf.GradientTape() as tape:
                logits = net(features, rates, tf.stack([seed[0], seed[1] * n + replica]), dtype)
                losses = model.ctc_loss(logits, feature_lengths, labels, label_lengths)
                loss = tf.reduce_mean(losses) / n  # the optimizer sums the replicas: the mean of their gradients
                if loss_scale is not None:
                    loss = loss * loss_scale.scale
            grads = tape.gradient(loss, variables)
            flags = [stop]
            if loss_scale is not None:  # gradients that overflowed float16 on any replica
                flags.append(tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32)) for g in grads]))
            return ctx.all_gather(losses, axis=0), grads, ctx.all_reduce(SUM, tf.stack(flags))

        @tf.function(input_signature=[[spec] * self.local, tf.TensorSpec([2], tf.int64), tf.TensorSpec([], tf.float32)])
        def step(batches, seed, stop):
            local = strategy.experimental_distribute_values_from_function(
                lambda ctx: batches[ctx.replica_id_in_sync_group - first])
            return strategy.run(replica_step, args=(local, seed, stop))

        def replica_apply(grads):
            # new tensors on this replica's device (a worker's single replica gets the step's outputs unplaced)
            grads = [g / loss_scale.scale if loss_scale is not None else tf.identity(g) for g in grads]
            opt.apply_gradients(zip(grads, variables))

        @tf.function
        def apply_step(grads):
            strategy.run(replica_apply, args=(grads,))

        first_of = strategy.experimental_local_results

        def gradients(group, seed, stop):
            local = [_inputs(b) for b in group[first:first + self.local]]
            losses, grads, flags = step(local, seed, tf.constant(float(stop)))
            flags = first_of(flags)[0].numpy()
            return first_of(losses)[0].numpy(), (grads, flags), bool(flags[0] > 0)

        def apply(update):
            grads, flags = update
            if loss_scale is not None and flags[1] > 0:
                loss_scale.scale.assign(loss_scale.scale / 2)
                loss_scale.good_steps.assign(0)
                log.info("float16 gradients overflowed: update skipped, loss scale lowered to %g",
                         float(loss_scale.scale.numpy()))
                return
            apply_step(grads)
            if loss_scale is not None:
                loss_scale.good_steps.assign_add(1)
                if int(loss_scale.good_steps.numpy()) >= GROWTH_STEPS:
                    loss_scale.scale.assign(loss_scale.scale * 2)
                    loss_scale.good_steps.assign(0)

        return gradients, apply


def _copy_state(src: Path, dst: Path) -> None:
    """The chief's checkpoints (those its state files list), run.json and metrics.csv, into another worker's state
    folder."""
    for sub, state_file in (("ckpt", "checkpoint"), ("best", "checkpoint")):
        state = src / sub / state_file
        if not state.is_file():
            continue
        text = re.sub(r'"(?:[^"]*/)?([^"/]+)"', r'"\1"', state.read_text(encoding="utf-8"))  # names, not paths
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for name in dict.fromkeys(re.findall(r'"([^"]+)"', text)):
            for f in (src / sub).glob(f"{name}.*"):
                shutil.copy2(f, dst / sub / f.name)
        (dst / sub / state_file).write_text(text, encoding="utf-8")
    for name in ("run.json", "metrics.csv"):  # the identity (a folder of checkpoints needs it), the epochs' rows
        if (src / name).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)
