"""Starting from a checkpoint (#14): DeepSpeech-format checkpoints through the workflow, fine-tuning, transfer
learning to another alphabet, and test-only / export-only runs, on the session's LDC93S1 model (`ldc16k`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsflow.cli import main
from tests.conftest import SENTENCE, SMOKE
from tests.workflow import snakemake, workdir

pytestmark = pytest.mark.slow
GERMAN = "schöne grüße aus köln"


@pytest.fixture(scope="module")
def deepspeech_checkpoint(ldc16k, tmp_path_factory):
    """The LDC93S1 model written in DeepSpeech 0.9.3's checkpoint format (dsflow export-checkpoint)."""
    out = tmp_path_factory.mktemp("ds") / "deepspeech-checkpoint"
    assert main(["export-checkpoint", "--checkpoint_dir", str(ldc16k["checkpoint"]), "--output_dir", str(out)]) == 0
    assert (out / "best_dev_checkpoint").exists() and (out / "flags.txt").exists()
    return out


def test_fine_tuning_a_deepspeech_checkpoint_for_0_epochs_loses_nothing(deepspeech_checkpoint, ldc16k, tmp_path):
    """Through the workflow: load_checkpoint_dir = a DeepSpeech checkpoint, epochs 0: the evaluation is exact."""
    start = tmp_path / "start"
    shutil.copytree(deepspeech_checkpoint, start)
    wd = workdir(tmp_path)
    run = ["--cores", "2", *SMOKE, "--config", f"load_checkpoint_dir={start}", "epochs=0", "export_dir="]
    snakemake(wd, *run)
    log = (wd / "results/logs/train.log").read_text()
    assert f"starting from {start}/best_dev-" in log and "0 epochs trained" in log
    evaluation = json.loads((wd / "results/evaluate/metrics.json").read_text())
    assert [m["wer"] for m in evaluation.values()] == [0.0]
    # the starting point counts by its content: touched, it re-runs nothing; another checkpoint in its place re-runs
    # training and what follows, nothing before
    for f in start.iterdir():
        os.utime(f, (f.stat().st_atime, f.stat().st_mtime + 10))
    assert "Nothing to be done" in snakemake(wd, "-n", *run).stdout
    assert main(["export-checkpoint", "--checkpoint_dir", str(ldc16k["checkpoint"]), "--load_evaluate", "last",
                 "--output_dir", str(start)]) == 0
    dry = snakemake(wd, "-n", *run).stdout
    assert "rule train:" in dry and "rule validate:" not in dry and "rule features:" not in dry


@pytest.mark.parametrize("fmt", ["deepspeech", "dsflow"])
def test_a_test_only_run_evaluates_and_exports_a_checkpoint(fmt, deepspeech_checkpoint, ldc16k, tmp_path):
    """DeepSpeech.py --test_files ... --checkpoint_dir ... without training: evaluation and export of that model."""
    model = deepspeech_checkpoint if fmt == "deepspeech" else ldc16k["checkpoint"]
    wd = workdir(tmp_path)
    out = snakemake(wd, "--cores", "2", "--config", "test_files=data/ldc93s1/ldc93s1.csv", f"checkpoint_dir={model}",
                    "export_dir=results/export", "export_zip=true").stdout
    assert "rule train:" not in out
    evaluation = json.loads((wd / "results/evaluate/metrics.json").read_text())
    assert [m["wer"] for m in evaluation.values()] == [0.0]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    text = subprocess.run([sys.executable, "-m", "dsflow", "transcribe", "results/export", "data/ldc93s1/LDC93S1.wav"],
                          cwd=wd, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert text == SENTENCE
    assert (wd / "results/export.zip").stat().st_size > 0  # export_zip
    # DeepSpeech's one_shot_infer: the checkpoint itself, no export
    text = subprocess.run([sys.executable, "-m", "dsflow", "infer", "--checkpoint_dir", str(model),
                           "data/ldc93s1/LDC93S1_pcms16le_2_44100.wav"], cwd=wd, env=env, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert text == SENTENCE


def test_transfer_learning_to_a_german_alphabet(ldc16k, tmp_path):
    """drop_source_layers 1 re-initializes only the output layer, which a new alphabet needs; without it the other
    alphabet is refused before training, naming the tensor and the flag. A German utterance (espeak-ng) with the
    English model's lower layers reaches its exact transcript in 100 epochs (from scratch: not yet after 100)."""
    wav, raw = tmp_path / "de.wav", tmp_path / "de.raw.wav"
    subprocess.run(["espeak-ng", "-v", "de", "-s", "140", "-w", str(raw), GERMAN], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
    (tmp_path / "de.csv").write_text(f"wav_filename,wav_filesize,transcript\nde.wav,{wav.stat().st_size},{GERMAN}\n")
    assert main(["alphabet", "--csv", str(tmp_path / "de.csv"), "--output", str(tmp_path / "de.txt")]) == 0
    assert main(["features", "--csv", str(tmp_path / "de.csv"), "--out_dir", str(tmp_path / "features")]) == 0
    args = ["train", "--train_features", str(tmp_path / "features"), "--dev_features", str(tmp_path / "features"),
            "--alphabet_config_path", str(tmp_path / "de.txt"), "--work_dir", str(tmp_path / "work"),
            "--checkpoint_dir", str(tmp_path / "ckpt"), "--checkpoint_secs", "0", "--n_hidden", "100",
            "--learning_rate", "0.001", "--dropout_rate", "0.05", "--train_batch_size", "1", "--dev_batch_size", "1",
            "--load_checkpoint_dir", str(ldc16k["checkpoint"])]
    log = tmp_path / "refused.log"
    assert main(["--log", str(log), *args, "--epochs", "1"]) == 2
    assert "layer_6" in log.read_text() and "drop_source_layers" in log.read_text()
    assert main([*args, "--epochs", "100", "--drop_source_layers", "1"]) == 0
    text = subprocess.run([sys.executable, "-m", "dsflow", "infer", "--checkpoint_dir", str(tmp_path / "ckpt"),
                           str(wav)], capture_output=True, text=True, check=True).stdout.strip()
    assert text == GERMAN
