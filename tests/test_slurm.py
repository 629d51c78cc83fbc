"""profiles/slurm on a real SLURM: a one-node cluster on this machine (scripts/slurm_local.sh: munge, slurmdbd
with MariaDB, slurmctld, slurmd from Debian), the whole chain submitted with sbatch by the SLURM executor plugin,
every job checked in `sacct`, and training (two tasks started by srun, two workers of one training) killed by
SLURM at its time limit, retried, resumed from its state.

What differs from a production cluster is listed in scripts/slurm_local.sh and the README (a stand-in GPU device,
no cgroups, one host). Runs as root (it starts the daemons); selected with `-m slurm`.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.test_train_workflow import trainer_pids
from tests.test_workflow import tiny_cv  # noqa: F401  (the fixture: a tiny Common Voice release)
from tests.workflow import ROOT, workdir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EPOCHS = 10


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node SLURM cluster; yields its SLURM_CONF."""
    if os.geteuid() != 0:
        pytest.skip("starts SLURM's daemons: needs root")
    state = tmp_path_factory.mktemp("slurm")
    script = str(ROOT / "scripts/slurm_local.sh")
    try:
        started = subprocess.run(["bash", script, "start", str(state)], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, timeout=900)
        assert started.returncode == 0, started.stdout
        yield str(state / "etc/slurm.conf")
    finally:  # also after a failed start: whatever did start stops, /etc/slurm/slurm.conf goes
        subprocess.run(["bash", script, "stop", str(state)], timeout=120)


def sacct(conf: str, run_output: str) -> pd.DataFrame:
    """The job allocations of one Snakemake run in the accounting database: rule (from the plugin's --comment),
    state, partition, ... The plugin names every job of a run by the run's ID."""
    run_id = re.search(r"SLURM run ID: (\S+)", run_output)[1]
    out = subprocess.run(["sacct", "-X", "--parsable2", "--noheader", "--allusers", "--starttime", "now-1days",
                          "--name", run_id,
                          "--format=JobIDRaw,Comment,State,Partition,Account,AllocTRES,Timelimit,Start,End"],
                         env=dict(os.environ, SLURM_CONF=conf), stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    cols = ["id", "comment", "state", "partition", "account", "tres", "timelimit", "start", "end"]
    jobs = pd.DataFrame([line.split("|") for line in out.splitlines()], columns=cols)
    jobs["rule"] = jobs.comment.str.extract(r"^rule_([a-z_]+?)(?:_wildcards_.*)?$", expand=False)
    return jobs.sort_values("id", key=lambda s: s.astype(int), ignore_index=True)


def steps(conf: str, job: str) -> dict:
    """The job steps of a job in the accounting: step name -> its number of tasks."""
    out = subprocess.run(["sacct", "-j", job, "--parsable2", "--noheader", "--format=JobID,NTasks"],
                         env=dict(os.environ, SLURM_CONF=conf), stdout=subprocess.PIPE, text=True, check=True).stdout
    return {line.split("|")[0].partition(".")[2]: line.split("|")[1] for line in out.splitlines() if "." in line}


def snakemake_env(conf: str) -> dict:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return dict(os.environ, SLURM_CONF=conf, PATH=path)  # sbatch, sacct, squeue: this cluster


def test_gpu_jobs_are_not_capped_by_the_workflow_profile(tmp_path, slurm):
    """profiles/default caps local runs at one GPU job (resources: gpu=1) and Snakemake reads it on every run;
    profiles/slurm scopes `gpu` per job, so two GPU jobs run at once, each on its own GPU from SLURM."""
    for name in ("default", "slurm"):
        shutil.copytree(ROOT / "profiles" / name, tmp_path / "profiles" / name)
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: expand("{name}.done", name=["a", "b"])\n\n'
        'rule gpu_job:\n    output: "{name}.done"\n    resources: gpu=1\n'
        '    shell: "sleep 15; echo $CUDA_VISIBLE_DEVICES > {output}"\n')
    run = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
                          "--slurm-init-seconds-before-status-checks", "2"], cwd=tmp_path, env=snakemake_env(slurm),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert run.returncode == 0, run.stdout
    jobs = sacct(slurm, run.stdout)
    assert jobs.state.tolist() == ["COMPLETED"] * 2 and jobs.tres.str.contains("gres/gpu=1").all(), jobs
    assert max(jobs.start) < min(jobs.end), jobs  # they overlapped
    assert sorted((tmp_path / f"{n}.done").read_text().strip() for n in "ab") == ["0", "1"]


def test_whole_chain_through_sbatch_with_a_wall_time_kill(tmp_path, tiny_cv, slurm):  # noqa: F811
    """The whole chain; training spans two tasks (train_nodes=2: srun starts one dsflow worker per task, the
    cluster taken from SLURM's environment, MultiWorkerMirroredStrategy), killed at its time limit and resumed."""
    wd = workdir(tmp_path)
    # The shipped profile, with two changes: training's first attempt gets a 1-minute limit, and its two tasks
    # (train_nodes=2: --nodes=2 --ntasks=2) run on this cluster's one node (nodes: 1).
    profile = wd / "profiles/slurm/profile.yaml"
    settings = yaml.safe_load(profile.read_text())
    settings["set-resources"]["train"]["runtime"] = "1 if attempt == 1 else 30"
    settings["set-resources"]["train"]["nodes"] = 1
    profile.write_text(yaml.safe_dump(settings))

    config = [f"common_voice_dir={tiny_cv}", "n_hidden=16", f"epochs={EPOCHS}", "early_stop=false",
              "reduce_lr_on_plateau=false", "train_batch_size=2", "dev_batch_size=2", "test_batch_size=2",
              "report_count=2", "train_nodes=2", "build_lm=true", "export_dir=results/export"]
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
                            "--slurm-init-seconds-before-status-checks", "2", "--config", *config],
                           cwd=wd, env=snakemake_env(slurm), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    try:
        # Once the first attempt has trained two epochs, freeze the trainer (SIGSTOP), so that the 1-minute
        # limit strikes before training ends however fast this machine is. SLURM enforces the limit itself:
        # SIGCONT + SIGTERM to the job's processes, SIGKILL after KillWait, state TIMEOUT.
        train_log = wd / "results/logs/train.log"
        deadline = time.monotonic() + 1200
        while not (train_log.exists() and "Training epoch 2..." in train_log.read_text()):
            assert run.poll() is None and time.monotonic() < deadline, "training never reached epoch 2"
            time.sleep(0.2)
        frozen = trainer_pids(wd)  # both workers (and srun)
        assert len(frozen) >= 2, "the trainers are not running"
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        out = run.communicate(timeout=1800)[0]
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, out

    # Every job went through sbatch and is in the accounting database; all ended COMPLETED, except training's
    # first attempt, which SLURM killed at its time limit (TIMEOUT) and Snakemake resubmitted.
    jobs = sacct(slurm, out)
    assert jobs.rule.notna().all(), jobs
    assert sorted(jobs.rule) == sorted(["import_cv"] + ["validate"] * 3 + ["features"] * 3 + ["train"] * 2
                                       + ["lm", "evaluate", "export", "plot", "evaluation_page",
                                          "validation_page", "run_page"]), jobs.to_string()
    train = jobs[jobs.rule == "train"]
    assert train.state.tolist() == ["TIMEOUT", "COMPLETED"], train
    assert train.timelimit.tolist() == ["00:01:00", "00:30:00"]
    assert (jobs[jobs.rule != "train"].state == "COMPLETED").all(), jobs
    # train, evaluate and export ran in the GPU partition with one GPU; the rest in the default CPU partition.
    gpu = jobs.rule.isin(["train", "evaluate", "export"])
    assert (jobs[gpu].partition == "gpu").all() and jobs[gpu].tres.str.contains("gres/gpu=1").all(), jobs
    assert (jobs[~gpu].partition == "cpu").all() and not jobs[~gpu].tres.str.contains("gpu").any(), jobs
    assert (jobs.account == "dsflow").all()  # the user's default account
    assert "Trying to restart job" in out

    # Each attempt ran one job step of two tasks (srun), the workers of one training: the chief logs to the rule's
    # log (the retry's: Snakemake empties it), worker 1 to train.log.worker1 (both attempts).
    for job in train.id:
        assert steps(slurm, job).get("0") == "2", steps(slurm, job)
    log = (wd / "results/logs/train.log").read_text()
    worker1 = (wd / "results/logs/train.log.worker1").read_text()
    assert "worker 0 of 2" in log and worker1.count("worker 1 of 2") == 2

    # The retry continued from the state the killed attempt saved, not from epoch 0, and finished the run. Only
    # the chief wrote a state folder (worker 1 trained on a private copy of it).
    resumed = re.search(r"resuming from \S+: epoch (\d+), step \d+", log)
    assert resumed and int(resumed[1]) >= 2, log[:3000]
    assert re.search(rf"resuming from \S+: epoch {resumed[1]}, step", worker1)
    assert "Training epoch 0..." not in log
    assert len(list((wd / "results/work/train").iterdir())) == 1
    # 10 clips, 2 per device, 2 devices: 2 steps an epoch (the fifth batch is dropped, DeepSpeech's towers)
    rows = pd.read_csv(wd / "results/checkpoints/metrics.csv")
    assert rows.epoch.tolist() == list(range(EPOCHS)) and rows.global_step.tolist() == [2 * (e + 1) for e in rows.epoch]
    # The killed attempt's SLURM log is kept (successful ones are deleted); it shows SLURM's time-out.
    killed = train.id.iloc[0]
    slurm_log = next((wd / ".snakemake/slurm_logs/rule_train").glob(f"{killed}.log"))
    assert "DUE TO TIME LIMIT" in slurm_log.read_text()

    evaluation = (wd / "results/evaluate/report.md").read_text()
    assert re.search(r"Test on \S+/test.tsv - WER: ", evaluation)
    for split in ("train", "dev", "test"):
        assert len(pd.read_csv(wd / f"results/features/{split}/index.csv")) == 10
