import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
LDC = DATA / "ldc93s1"


@pytest.fixture
def ldc(tmp_path):
    """A writable copy of the LDC93S1 smoke-test files."""
    dst = tmp_path / "ldc93s1"
    shutil.copytree(LDC, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


TINY = ["--configfile", ".test/config-tiny.yaml"]  # the smallest whole chain on your own CSVs
SMOKE = ["--configfile", ".test/config-smoke.yaml"]  # DeepSpeech's LDC93S1 smoke test
MISSING_ROWS = 20000  # test.csv: over 1 MB, past Snakemake's default --max-checksum-file-size


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory):
    """A workflow folder after one real run of the whole chain on your-own-CSVs config TINY (.test/config-tiny.yaml):
    LDC93S1 in train/dev/test, plus 20,000 rows of missing audio in test.csv that validation drops."""
    from tests.workflow import snakemake, workdir

    wd = workdir(tmp_path_factory.mktemp("tiny"))
    with open(wd / ".test/tiny/test.csv", "a") as f:
        f.write("".join(f"missing/clip{i:05d}.wav,32044,a clip that is not there\n" for i in range(MISSING_ROWS)))
    snakemake(wd, "--cores", "2", *TINY)
    return wd


SENTENCE = "she had your dark suit in greasy wash water all year"


# ---- DeepSpeech's LDC93S1 smoke-test model, trained once per test session

def train_ldc93s1(tmp, wav, rate):
    """DeepSpeech's LDC93S1 smoke test through `dsflow train`, at `rate`: 325 epochs, then 25 more at a time
    until the best-dev checkpoint's greedy transcript is exact (training is deterministic: 325 on the machines
    measured), exported three ways: DeepSpeech's quantized and float .tflite, and (export_tflite false) its .pb and
    .pbmm. Returns {"quantized"|"float": .tflite path, "pb", "pbmm": paths, "net", "features", "checkpoint": the
    published checkpoint folder}. Shared by every test that needs a model that works."""
    from dsflow import checkpoints, dataset, features
    from dsflow.cli import main
    from dsflow.decode import greedy

    (tmp / "ldc.csv").write_text(f"wav_filename,wav_filesize,transcript\n{wav},{wav.stat().st_size},{SENTENCE}\n")
    feats = tmp / "features"
    features.write_features(tmp / "ldc.csv", feats, sample_rate=rate)
    args = ["train", "--train_features", str(feats), "--dev_features", str(feats), "--alphabet_config_path",
            str(DATA / "alphabet.txt"), "--work_dir", str(tmp / "work"), "--checkpoint_dir", str(tmp / "ckpt"),
            "--checkpoint_secs", "0", "--n_hidden", "100", "--learning_rate", "0.001", "--dropout_rate", "0.05",
            "--train_batch_size", "1", "--dev_batch_size", "1"]
    for epochs in range(325, 451, 25):
        assert main([*args, "--epochs", str(epochs)]) == 0
        net = checkpoints.load_model(tmp / "ckpt", "best")
        batch = next(iter(dataset.load(feats, net.alphabet, 1, train=False)))
        text = greedy(net(batch["features"]).numpy()[:, 0], int(batch["feature_lengths"][0]), net.alphabet)
        if text == SENTENCE:
            break
    assert text == SENTENCE, f"LDC93S1 after {epochs} epochs: {text!r}"
    out = {"net": net, "features": feats, "checkpoint": tmp / "ckpt"}
    for kind, quantize in (("quantized", "true"), ("float", "false")):
        assert main(["export", "--checkpoint_dir", str(tmp / "ckpt"), "--export_dir", str(tmp / kind),
                     "--export_tflite", "true", "--export_quantize", quantize]) == 0
        out[kind] = tmp / kind / "output_graph.tflite"
    assert main(["export", "--checkpoint_dir", str(tmp / "ckpt"), "--export_dir", str(tmp / "pb")]) == 0
    out["pb"], out["pbmm"] = tmp / "pb" / "output_graph.pb", tmp / "pb" / "output_graph.pbmm"
    return out


@pytest.fixture(scope="session")
def ldc16k(tmp_path_factory):
    return train_ldc93s1(tmp_path_factory.mktemp("ldc16k"), LDC / "LDC93S1.wav", 16000)


@pytest.fixture(scope="session")
def ldc8k(tmp_path_factory):
    return train_ldc93s1(tmp_path_factory.mktemp("ldc8k"), LDC / "LDC93S1_pcms16le_1_8000.wav", 8000)


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory):
    """A random n_hidden 24 network (no training) in DeepSpeech's quantized .tflite format."""
    from dsflow import export, model, tflite
    from dsflow.alphabet import Alphabet

    net = model.DeepSpeech(24, 29, seed=7)
    net.alphabet = Alphabet.from_file(DATA / "alphabet.txt")
    meta = {"sample_rate": 16000, "feature_win_len": 32, "feature_win_step": 20, "beam_width": 77,
            "alphabet": net.alphabet, "language": "en"}
    path = tmp_path_factory.mktemp("tiny") / "tiny.tflite"
    path.write_bytes(tflite.convert(export.streaming_module(net, 16, meta), quantize=True))
    return path


def stream_in_chunks(model, samples) -> tuple[str, list[str]]:
    """Feeds `samples` to a runtime model's stream in chunks of 7, 160, 333 and 1024 samples in turn; returns the
    final transcript and the intermediate one after every 40 chunks."""
    sizes, start, partial = [7, 160, 333, 1024], 0, []
    with model.stream() as stream:
        for i in range(10 ** 6):
            if start >= len(samples):
                break
            stream.feed(samples[start:start + sizes[i % 4]])
            start += sizes[i % 4]
            if i % 40 == 39:
                partial.append(stream.intermediate())
        return stream.finish(), partial


def sox_samples(path, rate, tmp_path):
    """16-bit mono samples at `rate`, converted with sox as DeepSpeech's client.py did."""
    import soundfile as sf

    out = tmp_path / f"{path.stem}.{rate}.wav"
    subprocess.run(["sox", str(path), "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", str(out)],
                   check=True)
    samples, got = sf.read(out, dtype="int16")
    assert got == rate and samples.ndim == 1
    return samples
