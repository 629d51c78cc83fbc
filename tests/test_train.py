import csv
import json
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from dsflow import checkpoints, dataset, features, model  # noqa: E402
from dsflow.cli import main  # noqa: E402
from dsflow.decode import greedy  # noqa: E402
from tests.conftest import DATA, LDC, ROOT  # noqa: E402

ALPHABET = str(DATA / "alphabet.txt")
LDC_TEXT = "she had your dark suit in greasy wash water all year"


def make_features(tmp_path, name, transcripts):
    """A features folder of LDC93S1 copies (one WAV per transcript) through the real `dsflow features` code."""
    d = tmp_path / name
    d.mkdir()
    rows = ["wav_filename,wav_filesize,transcript"]
    for i, text in enumerate(transcripts):
        shutil.copyfile(LDC / "LDC93S1.wav", d / f"clip{i:03d}.wav")
        rows.append(f"clip{i:03d}.wav,93638,{text}")
    (d / "clips.csv").write_text("\n".join(rows) + "\n")
    features.write_features(d / "clips.csv", d / "features", threads=2)
    return d / "features"


@pytest.fixture(scope="module")
def ldc_features(tmp_path_factory):
    out = tmp_path_factory.mktemp("ldc") / "features"
    features.write_features(LDC / "ldc93s1.csv", out)
    return out


def train_args(train, work, out, *extra, dev=None):
    args = ["train", "--train_features", str(train), "--alphabet_config_path", ALPHABET, "--work_dir", str(work),
            "--checkpoint_dir", str(out), "--checkpoint_secs", "0"]
    return args + (["--dev_features", str(dev)] if dev else []) + [str(e) for e in extra]


def state_dir(work):
    """The run's WORK: the one subfolder of --work_dir."""
    (sub,) = work.iterdir()
    return sub


def metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def variable(prefix, name):
    return tf.train.load_checkpoint(str(prefix)).get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")


@pytest.mark.slow
def test_ldc93s1_smoke_test_overfits_to_the_exact_transcript(ldc16k):
    """DeepSpeech's bin/run-ldc93s1.sh / CI: one utterance, train = dev, n_hidden 100, lr 0.001, dropout 0.05,
    batch 1, default seed; the greedy transcript of the best_dev model must be exact (the session's `ldc16k`
    fixture trains it, in steps of 25 epochs from 325, re-runs with a larger epochs continuing)."""
    net = checkpoints.load_model(ldc16k["checkpoint"])  # best_dev
    batch = next(iter(dataset.load(ldc16k["features"], net.alphabet, 1, train=False)))
    text = greedy(net(batch["features"]).numpy()[:, 0], int(batch["feature_lengths"][0]), net.alphabet)
    assert "best_dev-" in net.checkpoint
    assert text == LDC_TEXT


def test_nonfinite_loss_names_the_files_and_skips_the_update(tmp_path):
    bad = make_features(tmp_path, "bad", [" ".join([LDC_TEXT] * 3)])  # 155 characters, 145 frames
    out, log = tmp_path / "out", tmp_path / "train.log"
    assert main(["--log", str(log)] + train_args(bad, tmp_path / "work", out, "--n_hidden", 16, "--epochs", 2)) == 0
    wav = tmp_path / "bad" / "clip000.wav"
    text = log.read_text()
    assert f"E The following files caused an infinite (or NaN) loss: {wav} (update skipped)" in text
    trained, fresh = checkpoints.load_model(out, "last"), model.DeepSpeech(16, 29, seed=4568)
    for a, b in zip(trained.trainable_variables, fresh.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert variable(trained.checkpoint, "optimizer/_iterations") == 0
    assert [(r["skipped_batches"], r["train_loss"], r["global_step"]) for r in metrics(out / "metrics.csv")] == [
        ("1", "nan", "1"), ("1", "nan", "2")]


def test_changed_n_hidden_or_training_set_gets_a_fresh_work_dir_and_never_loads_another(tmp_path, ldc_features):
    work, log = tmp_path / "work", tmp_path / "train.log"
    assert main(train_args(ldc_features, work, tmp_path / "out16", "--n_hidden", 16, "--epochs", 1)) == 0
    first = state_dir(work)
    files = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file() and "summaries" not in p.parts}
    assert main(["--log", str(log)] + train_args(ldc_features, work, tmp_path / "out24", "--n_hidden", 24,
                                                 "--epochs", 1)) == 0
    n_params = model.DeepSpeech(24, 29).count_params()
    assert f"starting from a fresh model ({n_params:,} parameters, n_hidden 24)" in log.read_text()
    other = make_features(tmp_path, "other", [LDC_TEXT, LDC_TEXT])
    assert main(["--log", str(log)] + train_args(other, work, tmp_path / "out_other", "--n_hidden", 16,
                                                 "--epochs", 1)) == 0
    assert log.read_text().count("starting from a fresh model") == 2
    assert len(list(work.iterdir())) == 3
    assert {p: p.stat().st_mtime_ns for p in files} == files  # the first run's state untouched
    # A WORK whose run.json is not this run's identity (say, copied by hand) is refused, not loaded.
    run = json.loads((first / "run.json").read_text())
    (first / "run.json").write_text(json.dumps({**run, "model": {**run["model"], "n_hidden": 32}}))
    assert main(["--log", str(log)] + train_args(ldc_features, work, tmp_path / "out16", "--n_hidden", 16,
                                                 "--epochs", 2)) == 2
    assert "model.n_hidden: 32 there, 16 now" in log.read_text() and "never loaded" in log.read_text()
    assert json.loads((tmp_path / "out16" / "flags.json").read_text())["epochs"] == 1  # output untouched


def test_epochs_is_the_total_and_a_finished_run_republishes(tmp_path, ldc_features):
    work, out, log = tmp_path / "work", tmp_path / "out", tmp_path / "train.log"

    def run(epochs, *extra):
        return main(["--log", str(log)] + train_args(ldc_features, work, out, "--n_hidden", 16, "--epochs", epochs,
                                                     *extra, dev=ldc_features))

    assert run(2) == 0
    first = sorted(p.name for p in out.iterdir())
    assert {"alphabet.txt", "flags.json", "metrics.csv", "checkpoint", "best_dev_checkpoint", "features.json",
            "run.json"} <= set(first)
    assert any(n.startswith("train-") and n.endswith(".index") for n in first)
    assert any(n.startswith("best_dev-") and n.endswith(".index") for n in first)
    shutil.rmtree(out)  # Snakemake deletes the output before re-running the job
    assert run(2) == 0
    assert "2 epochs trained (--epochs 2); publishing" in log.read_text()
    assert sorted(p.name for p in out.iterdir()) == first  # the same checkpoints, nothing retrained
    assert run(3, "--checkpoint_secs", 100) == 0  # more epochs, and a setting that does not change the model
    text = log.read_text()
    assert "resuming from" in text and ": epoch 2, step 0, global step 2, Adam iterations 2" in text
    assert "flags changed since the last run" in text and "checkpoint_secs 0.0 -> 100.0" in text
    assert "epochs 2 -> 3" in text
    rows = metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and rows[-1]["global_step"] == "3"
    assert {r["learning_rate"] for r in rows} == {"0.001"}
    assert metrics(state_dir(work) / "metrics.csv") == rows

    def scalars(kind):  # TensorBoard event files (one per run, in no particular order): tag -> values by step
        found = {}
        for f in (state_dir(work) / "summaries" / kind).glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(f)):
                for v in event.summary.value:
                    found.setdefault(v.tag, []).append((event.step, float(tf.make_ndarray(v.tensor))))
        return {tag: [value for _, value in sorted(values)] for tag, values in found.items()}

    train, dev = scalars("train"), scalars("dev")
    assert len(train["step_loss"]) == 3 and len(train["loss"]) == 3 and len(dev["loss"]) == 3
    assert {"learning_rate", "audio_seconds_per_second", "epoch_seconds"} <= set(train)
    assert dev["loss"] == pytest.approx([float(r["dev_loss"]) for r in rows])

    # A changed hyperparameter gives a model trained with it: a fresh start in a state folder of its own (the
    # first one is kept, and taken up again when the old value comes back).
    assert run(3, "--learning_rate", 0.01) == 0
    assert log.read_text().count("starting from a fresh model") == 2 and len(list(work.iterdir())) == 2
    assert {r["learning_rate"] for r in metrics(out / "metrics.csv")} == {"0.01"}
    assert json.loads((out / "flags.json").read_text())["learning_rate"] == 0.01
    assert run(3) == 0
    assert "3 epochs trained (--epochs 3); publishing" in log.read_text()
    assert metrics(out / "metrics.csv") == rows


def test_summary_dir_gets_the_tensorboard_events(tmp_path, ldc_features):
    """DeepSpeech's summary_dir: TensorBoard's event files go there (train/ and dev/) instead of the state folder."""
    work, tb = tmp_path / "work", tmp_path / "tb"
    assert main(train_args(ldc_features, work, tmp_path / "out", "--n_hidden", 16, "--epochs", 1, "--summary_dir", tb,
                           dev=ldc_features)) == 0
    assert list((tb / "train").glob("events.out.tfevents.*")) and list((tb / "dev").glob("events.out.tfevents.*"))
    assert not (state_dir(work) / "summaries").exists()


def test_early_stop_ends_training_and_is_remembered(tmp_path, ldc_features):
    work, out, log = tmp_path / "work", tmp_path / "out", tmp_path / "train.log"
    args = ["--n_hidden", 16, "--early_stop", "true", "--es_epochs", 2, "--es_min_delta", 1e9]
    assert main(["--log", str(log)] + train_args(ldc_features, work, out, *args, "--epochs", 10, dev=ldc_features)) == 0
    rows = metrics(out / "metrics.csv")
    assert [r["epochs_without_improvement"] for r in rows] == ["0", "1", "2"]
    assert rows[-1]["event"].endswith("early stop") and "early stop" not in rows[-2]["event"]
    assert main(["--log", str(log)] + train_args(ldc_features, work, out, *args, "--epochs", 20, dev=ldc_features)) == 0
    assert "training stopped early at epoch 3 before; publishing" in log.read_text()
    assert len(metrics(out / "metrics.csv")) == 3


def test_killed_mid_epoch_resumes_with_all_state(tmp_path, ldc_features):
    """SIGKILL right after a mid-epoch checkpoint (a checkpoint after every batch: checkpoint_secs tiny; the kill
    at a logged point, tests/killer.py); the re-run continues at the saved epoch and step with the Adam state,
    learning rate, best dev loss and plateau counter, and ends exactly where an uninterrupted run ends (dropout
    masks are seeded by the global step, data order is fixed)."""
    train = make_features(tmp_path, "train", [LDC_TEXT] * 10)
    extra = ["--n_hidden", 64, "--epochs", 3, "--checkpoint_secs", 1e-9, "--threads", 2, "--reduce_lr_on_plateau",
             "true", "--plateau_epochs", 1, "--es_min_delta", 1e9]  # a plateau after every epoch but the first
    ref_out = tmp_path / "ref_out"
    assert main(train_args(train, tmp_path / "ref_work", ref_out, *extra, dev=ldc_features)) == 0

    work, out, log = tmp_path / "work", tmp_path / "out", tmp_path / "train.log"
    args = ["--log", str(log)] + train_args(train, work, out, *extra, dev=ldc_features)
    killed = subprocess.run([sys.executable, "-m", "tests.killer", r"saved \S+/train-\d+ \(epoch 2, step 4,", *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert killed.returncode == -9
    assert not out.exists()
    latest = tf.train.latest_checkpoint(str(state_dir(work) / "ckpt"))
    state = checkpoints.read_state(latest)
    epoch, step = state["epoch"], state["step"]
    assert (epoch, step) == (2, 4)
    saved = {"iterations": variable(latest, "optimizer/_iterations"), "lr": variable(latest, "optimizer/_learning_rate"),
             "best": state["best_dev_loss"], "counter": state["epochs_without_improvement"]}
    assert np.isclose(saved["lr"], 1e-4) and saved["counter"] == 1 and np.isfinite(saved["best"])
    killed_log = log.read_text()

    assert main(args) == 0
    resumed = log.read_text()[len(killed_log):]
    assert (f"resuming from {latest}: epoch 2, step {step}, global step {10 * 2 + step}, Adam iterations "
            f"{saved['iterations']}, learning rate {saved['lr']:g}, best dev loss {saved['best']:g}, "
            "epochs without improvement 1") in resumed
    assert "Training epoch 2 from step" in resumed and "Training epoch 1" not in resumed

    rows, ref_rows = metrics(out / "metrics.csv"), metrics(ref_out / "metrics.csv")
    assert [(r["epoch"], r["epochs_without_improvement"]) for r in rows] == [("0", "0"), ("1", "1"), ("2", "2")]
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([1e-3, 1e-3, 1e-4], rel=1e-6)
    for r, ref in zip(rows, ref_rows):
        assert float(r["dev_loss"]) == pytest.approx(float(ref["dev_loss"]), rel=1e-4)
    resumed_net, ref_net = checkpoints.load_model(out, "last"), checkpoints.load_model(ref_out, "last")
    for a, b in zip(resumed_net.trainable_variables, ref_net.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def test_a_second_trainer_on_the_same_state_is_refused_and_a_repeated_sigterm_still_saves(tmp_path, ldc_features):
    """Two trainers on one WORK would overwrite each other's checkpoints (a job left running by a dead
    Snakemake, then a re-run); SLURM and srun may both send SIGTERM at a time limit: the state is still saved."""
    train = make_features(tmp_path, "train", [LDC_TEXT] * 4)
    work, out, log = tmp_path / "work", tmp_path / "out", tmp_path / "train.log"
    args = train_args(train, work, out, "--n_hidden", 32, "--epochs", 1000, "--train_batch_size", 1)
    proc = subprocess.Popen([sys.executable, "-m", "dsflow", "--log", str(log)] + args,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (log.exists() and "Finished training epoch 1" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = tmp_path / "second.log"
        assert main(["--log", str(second)] + args) == 2
        assert re.search(rf"another trainer \(pid {proc.pid} on .*\) is training this state", second.read_text())
        proc.send_signal(15)
        proc.send_signal(15)
        assert proc.wait(timeout=120) == 128 + 15
    finally:
        proc.kill()
    text = log.read_text()
    assert "stopped by signal 15" in text and re.search(r"saved \S+/train-\d+ \(epoch \d+, step", text)
    assert not out.exists()  # stopped, not finished: nothing published


def test_checkpoints_are_named_by_global_step_and_an_unreadable_latest_gives_way_to_the_one_before(tmp_path, ldc_features):
    """DeepSpeech's names (train-<global step>); a latest checkpoint that a killed save left unreadable is skipped."""
    work, out, log = tmp_path / "work", tmp_path / "out", tmp_path / "train.log"
    train = make_features(tmp_path, "train", [LDC_TEXT] * 3)
    assert main(["--log", str(log)] + train_args(train, work, out, "--n_hidden", 16, "--epochs", 2)) == 0
    assert sorted(p.name for p in (state_dir(work) / "ckpt").glob("*.index")) == ["train-3.index", "train-6.index"]
    (state_dir(work) / "ckpt" / "train-6.data-00000-of-00001").write_bytes(b"cut short")
    assert main(["--log", str(log)] + train_args(train, work, out, "--n_hidden", 16, "--epochs", 3)) == 0
    text = log.read_text()
    assert "train-6 cannot be read" in text and "resuming from" in text
    assert re.search(r"resuming from \S+/train-3: epoch 1, step 0, global step 3", text)
    assert [r["epoch"] for r in metrics(out / "metrics.csv")] == ["0", "1", "2"]


def test_metrics_sets_are_reported_and_decide_nothing(tmp_path, ldc_features):
    """DeepSpeech's metrics_files: their loss after every epoch, in the log, metrics.csv and TensorBoard; the best-dev
    checkpoint and the schedule follow the dev set only. skip_batch_test leaves out the longest-batch step."""
    other = make_features(tmp_path, "other", [LDC_TEXT, "she had your dark suit"])
    work, out, log = tmp_path / "work", tmp_path / "out", tmp_path / "train.log"
    args = train_args(ldc_features, work, out, "--n_hidden", 16, "--epochs", 2, "--skip_batch_test", "true",
                      dev=ldc_features)
    assert main(["--log", str(log), *args, "--metrics_features", str(other)]) == 0
    rows = metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"] and all(float(r["metrics_loss"]) > 0 for r in rows)
    assert all(r["metrics_loss"] != r["dev_loss"] for r in rows)
    text = log.read_text()
    assert f"Finished metrics of epoch 1 on {other} - loss:" in text and "longest batch" not in text
    # the same run without the metrics set: the same model (metrics sets decide nothing)
    assert main(train_args(ldc_features, tmp_path / "work2", tmp_path / "out2", "--n_hidden", 16, "--epochs", 2,
                           dev=ldc_features)) == 0
    assert [r["dev_loss"] for r in metrics(tmp_path / "out2" / "metrics.csv")] == [r["dev_loss"] for r in rows]
