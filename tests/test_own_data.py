"""Your own data, the way a user meets it: `snakemake` on a small corpus of one's own CSVs (espeak-ng clips, not the
demo), with DeepSpeech's defaults for every setting not given (own.yaml sets only the data, n_hidden and epochs).

Changed settings and audio take effect, errors come before training, an interrupted run ends with one line.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.test_reruns import stale
from tests.workflow import snakemake, workdir

pytestmark = pytest.mark.slow
SENTENCES = ["the birch canoe slid on the smooth planks", "glue the sheet to the dark blue background",
             "it is easy to tell the depth of a well", "these days a chicken leg is a rare dish",
             "rice is often served in round bowls", "the juice of lemons makes fine punch"]
SPLITS = {"train": [0, 1, 2, 3], "dev": [4], "test": [5]}
OWN = ["--configfile", "own.yaml"]


def write_csv(path, clips) -> None:
    rows = [(f"{c}.wav", os.path.getsize(path.parent / f"{c}.wav"), SENTENCES[int(c[4:])]) for c in clips]
    pd.DataFrame(rows, columns=["wav_filename", "wav_filesize", "transcript"]).to_csv(path, index=False)


def own_corpus(wd) -> None:
    """own/clip{0..5}.wav (espeak-ng, 16 kHz mono 16-bit), own/{train,dev,test}.csv and own.yaml in `wd`."""
    folder = wd / "own"
    folder.mkdir()
    for i, text in enumerate(SENTENCES):
        raw = folder / f"raw{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
        subprocess.run(["sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(folder / f"clip{i}.wav")],
                       check=True)
        raw.unlink()
    for split, ids in SPLITS.items():
        write_csv(folder / f"{split}.csv", [f"clip{i}" for i in ids])
    (wd / "own.yaml").write_text("train_files: own/train.csv\ndev_files: own/dev.csv\ntest_files: own/test.csv\n"
                                 "n_hidden: 16\nepochs: 1\n")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The own corpus after one whole run (the terminal output is in first_run.txt)."""
    wd = workdir(tmp_path_factory.mktemp("own"))
    own_corpus(wd)
    (wd / "first_run.txt").write_text(snakemake(wd, "--cores", "2", *OWN).stdout)
    return wd


@pytest.fixture
def wd(first_run, tmp_path):
    """A private copy of the finished run (mtimes and Snakemake's metadata kept)."""
    dst = tmp_path / "wf"
    shutil.copytree(first_run, dst, symlinks=True)
    return dst


def flags(wd) -> dict:
    return json.loads((wd / "results/checkpoints/flags.json").read_text())


def test_what_you_do_not_set_is_deepspeechs_default(first_run):
    f = flags(first_run)
    assert (f["n_hidden"], f["epochs"]) == (16, 1)  # own.yaml
    assert (f["train_batch_size"], f["dev_batch_size"], f["learning_rate"], f["dropout_rate"]) == (1, 1, 0.001, 0.05)
    assert (f["early_stop"], f["reduce_lr_on_plateau"]) == (False, False)  # not the demo's schedule
    out = (first_run / "first_run.txt").read_text()
    assert "No export: export_dir is empty (DeepSpeech's default)" in out and not (first_run / "results/export").exists()
    # the terminal shows progress and results; TensorFlow's start-up lines go to the job logs only
    assert "Finished training epoch 0" in out  # DeepSpeech counts epochs from 0 in its log
    assert not re.search(r"oneDNN|absl::|XNNPACK|cuda_|Created device", out)
    assert re.search(r"oneDNN|absl::", (first_run / "results/logs/train.log").read_text())


def test_a_changed_hyperparameter_trains_a_model_with_it_and_more_epochs_continue(wd):
    snakemake(wd, "--cores", "2", *OWN, "--config", "learning_rate=0.0005")
    log = (wd / "results/logs/train.log").read_text()
    assert "starting from a fresh model" in log and "keeping the stored learning rate" not in log
    assert flags(wd)["learning_rate"] == 0.0005
    snakemake(wd, "--cores", "2", *OWN, "--config", "learning_rate=0.0005", "epochs=2")
    log = (wd / "results/logs/train.log").read_text()
    assert re.search(r"resuming from .*: epoch 1, ", log) and "starting from a fresh model" not in log
    assert (flags(wd)["learning_rate"], flags(wd)["epochs"]) == (0.0005, 2)
    assert list(pd.read_csv(wd / "results/checkpoints/metrics.csv")["epoch"]) == [0, 1]
    # back to the first settings: their own state (1 epoch at 0.001) is still there and continues
    snakemake(wd, "--cores", "2", *OWN, "--config", "epochs=2")
    assert re.search(r"resuming from .*: epoch 1, .*learning rate 0\.001", (wd / "results/logs/train.log").read_text())


def test_continuing_a_model_under_new_settings_happens_when_asked(wd):
    """DeepSpeech's way: load_checkpoint_dir names the model to start from, and force_initialize_learning_rate
    takes the configured rate instead of the stored one."""
    shutil.copytree(wd / "results/checkpoints", wd / "start")
    step = flags(wd)
    snakemake(wd, "--cores", "2", *OWN, "--config", "load_checkpoint_dir=start", "learning_rate=0.0002",
              "force_initialize_learning_rate=true")
    log = (wd / "results/logs/train.log").read_text()
    assert re.search(r"starting from \S*start\S* \(global step 4, learning rate 0\.0002", log), log[-3000:]
    assert flags(wd)["learning_rate"] == 0.0002 and step["learning_rate"] == 0.001


def test_log_level_sets_what_the_jobs_log_and_reruns_nothing(wd):
    """DeepSpeech's log_level and show_progressbar: what each job logs (an environment of the jobs, not a parameter,
    so changing them makes nothing stale)."""
    assert stale(snakemake(wd, "-n", *OWN, "--config", "log_level=2", "show_progressbar=false").stdout) == {}
    log = wd / "results/logs/validate_train.log"
    assert re.search(r" I dsflow --log .* validate ", log.read_text())  # the default, 1: info lines
    log.unlink()
    snakemake(wd, "--cores", "2", *OWN, "--forcerun", "validate", "--until", "validate", "--config", "log_level=3")
    assert log.exists() and not re.search(r" [DIW] ", log.read_text())  # errors only: none


def test_a_changed_or_removed_audio_file_reruns_its_split(wd):
    own = wd / "own"
    assert stale(snakemake(wd, "-n", *OWN).stdout) == {}
    # same name, same size, an old modification time, the CSV unchanged: only the content differs
    subprocess.run(["sox", "-D", str(own / "clip1.wav"), str(own / "quieter.wav"), "vol", "0.5"], check=True)
    assert (own / "quieter.wav").stat().st_size == (own / "clip1.wav").stat().st_size
    os.replace(own / "quieter.wav", own / "clip1.wav")
    os.utime(own / "clip1.wav", (1, 1))
    out = snakemake(wd, "-n", *OWN).stdout
    assert stale(out) == {"validate": 1, "features": 1, "train": 1, "evaluate": 1, "plot": 1, "evaluation_page": 1,
                          "validation_page": 1, "run_page": 1}
    assert re.findall(r"wildcards: split=(\w+)", out) == ["train", "train"]
    (own / "clip5.wav").unlink()  # a file the test CSV lists
    out = snakemake(wd, "-n", *OWN).stdout
    assert sorted(re.findall(r"wildcards: split=(\w+)", out)) == ["test", "test", "train", "train"]


def test_a_bad_header_stops_the_run_before_any_job(first_run, tmp_path):
    wd = workdir(tmp_path)
    shutil.copytree(first_run / "own", wd / "own")
    shutil.copy(first_run / "own.yaml", wd)
    csv = wd / "own/test.csv"
    csv.write_text(csv.read_text().replace("transcript", "text"))
    done = snakemake(wd, "--cores", "2", *OWN, check=False)
    assert done.returncode != 0
    assert re.search(r"test_files: .*own/test\.csv: header must be wav_filename,wav_filesize,transcript; missing "
                     r"\['transcript'\]", done.stdout), done.stdout[-2000:]
    assert not (wd / "results").exists()


def test_every_split_is_validated_before_training_and_all_failures_are_reported(first_run, tmp_path):
    """With validation_policy fail, dev (a character outside the alphabet) and test (its audio missing) both fail in
    one run, one line each; with the default policy (drop), test keeps no row and fails, naming its CSV. Training
    never starts."""
    wd = workdir(tmp_path)
    shutil.copytree(first_run / "own", wd / "own")
    shutil.copy(first_run / "own.yaml", wd)
    dev = wd / "own/dev.csv"
    write_csv(dev, ["clip4", "clip3"])
    dev.write_text(dev.read_text().replace("rice is", "rïce is"))
    (wd / "own/clip5.wav").unlink()
    done = snakemake(wd, "--cores", "2", *OWN, "--config", "validation_policy=fail", check=False)
    assert done.returncode != 0
    failed = [line for line in done.stdout.splitlines() if line.startswith("dsflow: ")]
    assert len(failed) == 2, done.stdout[-3000:]
    assert re.search(r"^dsflow: validate: validation of dev failed: 1 of 2 rows .*\(log: results/logs/validate_dev"
                     r"\.log\)$", done.stdout, re.M), failed
    assert re.search(r"^dsflow: validate: validation of test failed: 1 of 1 rows", done.stdout, re.M), failed
    assert "rule train:" not in done.stdout and not (wd / "results/checkpoints").exists()
    done = snakemake(wd, "--cores", "2", *OWN, check=False)
    assert done.returncode != 0
    assert re.search(r"^dsflow: validate: validation of test kept none of the 1 rows of .*own/test\.csv", done.stdout,
                     re.M), done.stdout[-3000:]
    assert "rule train:" not in done.stdout and not (wd / "results/checkpoints").exists()
    assert json.loads((wd / "results/validate/dev.summary.json").read_text())["rows_kept"] == 1


def test_too_few_rows_for_a_batch_names_the_config_key(wd):
    done = snakemake(wd, "--cores", "2", *OWN, "--config", "train_batch_size=8", check=False)
    assert done.returncode != 0
    assert re.search(r"dsflow: train: .*4 utterances, fewer than train_batch_size 8", done.stdout), done.stdout[-2000:]
    assert "--train_batch_size" not in done.stdout.split("dsflow: train:")[1]


def test_ctrl_c_during_training_ends_with_one_line_and_the_next_run_continues(wd):
    """Ctrl-C in a terminal: SIGINT to Snakemake and its jobs (one process group). The trainer saves its state and
    says how to continue; the terminal ends with that one line, not the training log."""
    args = [sys.executable, "-m", "snakemake", "--cores", "2", *OWN, "--config", "epochs=100000"]
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(args, cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    log = wd / "results/logs/train.log"
    deadline = time.monotonic() + 600
    while not (log.exists() and "Finished training epoch 1" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0
    assert "stopped by signal 2; re-run the same command to continue" in log.read_text()
    tail = out.splitlines()[-8:]
    assert any(re.match(r"dsflow: train: stopped by signal 2; re-run the same command to continue", t) for t in tail), \
        out[-3000:]
    # The terminal: Snakemake's lines and the trainer's progress lines (4 an epoch; how many epochs ran before the
    # signal depends on the machine's speed), never the rest of the training log.
    shown = 4 * out.count("Finished training epoch ")
    assert len(out.splitlines()) - shown < 80, out
    assert "training state:" in log.read_text() and "training state:" not in out
    assert re.search(r"^\S+ I saved ", log.read_text(), re.M) and "train: saved " not in out
    # The next run continues from the state saved at the signal (which epoch that is depends on the machine's speed)
    # and trains the rest: two more epochs here.
    epoch, step = map(int, re.findall(r"I saved \S+ \(epoch (\d+), step (\d+),", log.read_text())[-1])
    again = snakemake(wd, "--cores", "2", *OWN, "--config", f"epochs={epoch + 2}").stdout
    assert re.search(rf"resuming from .*: epoch {epoch}, step {step}, ", log.read_text()), log.read_text()[-3000:]
    assert f"Finished training epoch {epoch + 1} " in again and "Training epoch 0" not in log.read_text().split(
        "resuming from")[-1]
