"""`dsflow export`: DeepSpeech's streaming model from a trained checkpoint, parity with the checkpoint."""

import json

import pytest
from rapidfuzz.distance import Levenshtein

tf = pytest.importorskip("tensorflow")

from dsflow import checkpoints, dataset, export, exported, features, importer, model, transcribe  # noqa: E402
from dsflow.alphabet import Alphabet  # noqa: E402
from dsflow.cli import main  # noqa: E402
from dsflow.decode import greedy  # noqa: E402
from tests.conftest import DATA  # noqa: E402

CARD = """---
author: dsflow-tests
model_name: tiny
model_version: 1.2.3
contact_info: <help text>
license: MPL-2.0
language: Fake English (fk-FK)
runtime: tflite
min_ds_version: <help text>
max_ds_version: <help text>
acoustic_model_url: <replace this with a publicly available URL of the acoustic model>
scorer_url: <replace this with a publicly available URL of the scorer, if present>
---
A tiny model.
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained on a tiny demo corpus (Harvard list 1 spoken twice, espeak-ng) until it outputs
    characters, exported with `dsflow export` twice: quantized TFLite (DeepSpeech's) and float TFLite."""
    tmp = tmp_path_factory.mktemp("trained")
    assert main(["demo-corpus", "--text", str(DATA / "text/harvard_sentences.txt"), "--out", str(tmp / "cv"),
                 "--limit_lists", "1", "--takes", "2", "--threads", "2"]) == 0
    importer.import_cv(tmp / "cv", tmp / "import", tmp / "wav", threads=2)
    for split in ("train", "test"):
        features.write_features(tmp / "import" / f"{split}.csv", tmp / "features" / split, threads=2)
    train = str(tmp / "features/train")
    assert main(["train", "--train_features", train, "--dev_features", train,
                 "--alphabet_config_path", str(DATA / "alphabet.txt"), "--work_dir", str(tmp / "work"),
                 "--checkpoint_dir", str(tmp / "ckpt"), "--checkpoint_secs", "0", *TRAIN]) == 0
    common = ["export", "--checkpoint_dir", str(tmp / "ckpt"), "--export_tflite", "true",
              "--export_author_id", "dsflow-tests", "--export_model_name", "tiny", "--export_model_version", "1.2.3",
              "--export_license", "MPL-2.0", "--export_language", "Fake English (fk-FK)",
              "--export_description", "A tiny model.", "--export_beam_width", "123"]
    assert main([*common, "--export_dir", str(tmp / "export")]) == 0
    assert main([*common, "--export_dir", str(tmp / "float"), "--export_quantize", "false"]) == 0
    return tmp


TRAIN = ["--n_hidden", "32", "--epochs", "30", "--learning_rate", "0.002", "--train_batch_size", "1",
         "--dev_batch_size", "4"]


@pytest.fixture(scope="module")
def expected(trained) -> dict:
    """Greedy transcripts of the test set by the checkpoint network (as `dsflow evaluate` decodes)."""
    net = checkpoints.load_model(trained / "ckpt", "best")
    out = {}
    for batch in dataset.load(trained / "features/test", net.alphabet, 1, train=False):
        logits = net(batch["features"]).numpy()[:, 0]
        out[batch["wav_filename"][0].numpy().decode()] = greedy(logits, int(batch["feature_lengths"][0]), net.alphabet)
    return out


def test_float_tflite_and_savedmodel_transcribe_the_test_set_like_the_checkpoint(trained, expected):
    assert len(expected) == 20 and sum(t != "" for t in expected.values()) >= 10  # the model does output text
    for path, savedmodel in ((trained / "float", False), (trained / "export", True)):
        m = exported.ExportedModel(path, savedmodel)
        assert {wav: transcribe.transcribe(m, wav) for wav in expected} == expected, m.kind


def test_quantized_tflite_is_smaller_and_close_to_the_checkpoint(trained, expected):
    """DeepSpeech's dynamic-range quantization (int8 weights with one scale per tensor, int8 activations
    quantized symmetrically at run time; tensors under 1024 weights stay float32) changes the probabilities a
    little: 3 of the 43 characters here (TF 2.21's default per-channel scales, which DeepSpeech's runtime cannot
    run, changed 2)."""
    m = exported.ExportedModel(trained / "export")
    quantized = {wav: transcribe.transcribe(m, wav) for wav in expected}
    distance = sum(Levenshtein.distance(quantized[w], expected[w]) for w in expected)
    assert distance <= 0.1 * sum(len(t) for t in expected.values())
    sizes = [(trained / d / "output_graph.tflite").stat().st_size for d in ("export", "float")]
    assert sizes[0] < 0.6 * sizes[1]


def test_export_folder_metadata_and_model_card(trained):
    out = trained / "export"
    assert sorted(p.name for p in out.iterdir()) == ["alphabet.txt", "dsflow-tests_tiny_1.2.3.md", "metadata.json",
                                                     "output_graph.tflite", "saved_model"]
    assert (out / "dsflow-tests_tiny_1.2.3.md").read_text() == CARD
    alphabet = Alphabet.from_file(DATA / "alphabet.txt")
    assert Alphabet.from_file(out / "alphabet.txt").labels == alphabet.labels
    info = json.loads((out / "metadata.json").read_text())
    assert {k: info[k] for k in ("version", "sample_rate", "feature_win_len", "feature_win_step", "beam_width",
                                 "alphabet", "language", "n_steps", "n_hidden", "tflite", "tflite_quantized")} == {
        "version": 6, "sample_rate": 16000, "feature_win_len": 32, "feature_win_step": 20, "beam_width": 123,
        "alphabet": alphabet.labels, "language": "Fake English (fk-FK)", "n_steps": 16, "n_hidden": 32,
        "tflite": "output_graph.tflite", "tflite_quantized": True}
    assert "best_dev" in info["checkpoint"]
    for savedmodel in (False, True):  # the same metadata inside both models, as DeepSpeech's graph nodes
        m = exported.ExportedModel(out, savedmodel)
        assert (m.version, m.sample_rate, m.win_len, m.win_step, m.beam_width, m.language) == (
            6, 16000, 32, 20, 123, "Fake English (fk-FK)")
        assert m.alphabet.labels == alphabet.labels and m.alphabet.serialize() == alphabet.serialize()
        assert (m.n_steps, m.n_hidden, m.n_classes, m.window, m.stride) == (16, 32, 29, 512, 320)


def test_an_interrupted_export_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    net = model.DeepSpeech(8, 29)
    net.alphabet, net.checkpoint = Alphabet.from_file(DATA / "alphabet.txt"), "untrained"
    meta = {"sample_rate": 16000, "win_len_ms": 32.0, "win_step_ms": 20.0}
    export.write_export(net, tmp_path / "export", export.options(), meta)
    before = sorted(p.name for p in (tmp_path / "export").iterdir())

    def killed(*args):
        raise KeyboardInterrupt  # like a SIGINT after everything but the model card is written

    monkeypatch.setattr(export, "model_card", killed)
    with pytest.raises(KeyboardInterrupt):
        export.write_export(net, tmp_path / "export", export.options(export_tflite=True), meta)
    with pytest.raises(KeyboardInterrupt):
        export.write_export(net, tmp_path / "new", export.options(export_tflite=True), meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no partial folder, no "new"
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == before  # the previous export is intact


def test_cli_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["export", "--checkpoint_dir", str(tmp_path), "--export_dir", str(tmp_path / "out")]) == 2
    # neither dsflow's folder (flags.json, features.json) nor DeepSpeech's (a checkpoint state file)
    assert "no best_dev_checkpoint or checkpoint state file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
