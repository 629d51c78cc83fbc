import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from dsflow import UserError, checkpoints, dataset, features, model  # noqa: E402
from dsflow.cli import main  # noqa: E402
from dsflow.decode import greedy  # noqa: E402
from dsflow.evaluate import KEYS, report, sections, sort_samples  # noqa: E402
from dsflow.wer import corpus_rates, sample_result  # noqa: E402
from tests.conftest import LDC  # noqa: E402
from tests.test_train import LDC_TEXT, make_features, train_args  # noqa: E402


def test_sample_metrics_are_uncapped_levenshtein_over_characters_and_words():
    s = sample_result("a.wav", "the cat sat", "the bat sat down", 3.5)
    assert list(s) == list(KEYS)
    assert (s["char_distance"], s["char_length"], s["word_distance"], s["word_length"]) == (6, 11, 2, 3)
    assert s["cer"] == 6 / 11 and s["wer"] == 2 / 3 and s["loss"] == 3.5
    long = sample_result("b.wav", "hi", "oh my oh my", 1.0)  # more errors than reference words
    assert long["wer"] == 4.0 and long["cer"] == 10 / 2
    empty = sample_result("c.wav", "a b", "", 2.0)
    assert (empty["char_distance"], empty["word_distance"], empty["wer"], empty["cer"]) == (3, 2, 1.0, 1.0)
    assert sample_result("d.wav", "same words", "same words", 0.1)["wer"] == 0.0
    with pytest.raises(UserError, match="e.wav"):
        sample_result("e.wav", "   ", "x", 1.0)


def test_corpus_rates_sum_distances_over_lengths_capped_at_one():
    a = sample_result("a", "one two three four", "one two three five", 1.0)  # 1/4 words, 3/18 chars
    b = sample_result("b", "hi", "oh my oh my", 1.0)  # 4/1 words, 10/2 chars
    wer, cer = corpus_rates([a])
    assert (wer, cer) == (1 / 4, 3 / 18)
    wer, cer = corpus_rates([a, b])  # (1 + 4) / (4 + 1) = 1.0, (3 + 10) / 20
    assert (wer, cer) == (1.0, 13 / 20)
    assert corpus_rates([b]) == (1.0, 1.0)  # 4.0 and 5.0, capped


def fake(n, wer, loss):
    return {"wav_filename": f"{n}.wav", "src": "x", "res": "y", "loss": loss, "wer": wer, "cer": wer}


def test_sort_is_wer_ascending_then_loss_descending():
    samples = [fake("a", 0.5, 1.0), fake("b", 0.0, 2.0), fake("c", 0.5, 9.0), fake("d", 0.0, 5.0),
               fake("e", 1.0, 0.5), fake("f", 0.5, 9.0)]
    assert [s["wav_filename"] for s in sort_samples(samples)] == ["d.wav", "b.wav", "c.wav", "f.wav", "a.wav",
                                                                  "e.wav"]


def test_sections_best_median_worst_windows():
    samples = [fake(str(i), i, 0.0) for i in range(10)]
    names = lambda k, n: [s["wav_filename"] for s in sections(samples, n)[k]]  # noqa: E731
    assert names("Best WER:", 3) == ["0.wav", "1.wav", "2.wav"]
    assert names("Median WER:", 3) == ["4.wav", "5.wav", "6.wav"]  # starts 3//2 before index 10//2
    assert names("Median WER:", 4) == ["3.wav", "4.wav", "5.wav", "6.wav"]
    assert names("Worst WER:", 3) == ["7.wav", "8.wav", "9.wav"]
    assert all(names(k, 0) == [] for k in ("Best WER:", "Median WER:", "Worst WER:"))
    samples = samples[:3]  # fewer samples than report_count: every section shows them all
    assert all(names(k, 5) == ["0.wav", "1.wav", "2.wav"] for k in ("Best WER:", "Median WER:", "Worst WER:"))


def test_report_text_is_deepspeech_print_report():
    a = sample_result("/d/a.wav", "ab cd", "ab", 3.0)
    b = sample_result("/d/b.wav", "ef", "ef", 1.25)
    text = report("test/features", [b, a], 0.333333333, 0.4, 2.125, 1)
    dashes = "-" * 80
    sample_b = ["WER: 0.000000, CER: 0.000000, loss: 1.250000", " - wav: file:///d/b.wav", ' - src: "ef"',
                ' - res: "ef"', dashes]
    sample_a = ["WER: 0.500000, CER: 0.600000, loss: 3.000000", " - wav: file:///d/a.wav", ' - src: "ab cd"',
                ' - res: "ab"', dashes]
    assert text.split("\n") == (["Test on test/features - WER: 0.333333, CER: 0.400000, loss: 2.125000", dashes,
                                 "Best WER: ", dashes] + sample_b + ["Median WER: ", dashes] + sample_a
                                + ["Worst WER: ", dashes] + sample_a + [""])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real (tiny) checkpoint: `dsflow train` for one epoch on LDC93S1 with n_hidden 16."""
    tmp = tmp_path_factory.mktemp("ckpt")
    ldc = tmp / "features"
    features.write_features(LDC / "ldc93s1.csv", ldc)
    assert main(train_args(ldc, tmp / "work", tmp / "out", "--n_hidden", 16, "--epochs", 1)) == 0
    return tmp / "out"


def test_cli_end_to_end_on_a_tiny_checkpoint(tmp_path, checkpoint):
    one = make_features(tmp_path, "one", [LDC_TEXT, "she had your dark suit"])
    two = make_features(tmp_path, "two", ["greasy wash water", "all year", "dark suit"])
    out, md, met, log = tmp_path / "out.json", tmp_path / "report.md", tmp_path / "metrics.json", tmp_path / "log"
    assert main(["--log", str(log), "evaluate", "--checkpoint_dir", str(checkpoint),
                 "--test_features", f"{one},{two}", "--test_batch_size", "2", "--report_count", "1",
                 "--load_evaluate", "auto", "--test_output_file", str(out), "--report", str(md),
                 "--metrics", str(met)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert [list(r) for r in rows] == [list(KEYS)] * 5
    assert out.read_text().startswith('[\n  {\n    "wav_filename": ')  # indent=2

    # Every number recomputed here, utterance by utterance, from the model and the references.
    net = checkpoints.load_model(checkpoint, "last")
    expected = {}
    for d in (one, two):
        for batch in dataset.load(d, net.alphabet, 1, train=False):
            logits = net(batch["features"])
            loss = float(model.ctc_loss(logits, batch["feature_lengths"], batch["labels"], batch["label_lengths"])[0])
            res = greedy(logits.numpy()[:, 0], int(batch["feature_lengths"][0]), net.alphabet)
            expected[batch["wav_filename"][0].numpy().decode()] = (res, loss)
    for r in rows:
        res, loss = expected[r["wav_filename"]]
        assert r["res"] == res and r["loss"] == pytest.approx(loss, rel=1e-4)
        assert r == pytest.approx(sample_result(r["wav_filename"], r["src"], res, r["loss"]))
    assert [r["wav_filename"] for r in rows[:2]] == [s["wav_filename"] for s in sort_samples(rows[:2])]
    assert {r["wav_filename"].split("/")[-2] for r in rows[:2]} == {"one"}
    assert {r["src"] for r in rows[2:]} == {"greasy wash water", "all year", "dark suit"}

    metrics = json.loads(met.read_text())
    assert list(metrics) == [str(one), str(two)]
    for name, part in ((str(one), rows[:2]), (str(two), rows[2:])):
        wer, cer = corpus_rates(part)
        assert metrics[name] == pytest.approx({"wer": wer, "cer": cer, "samples": len(part),
                                               "loss": float(np.mean([r["loss"] for r in part]))})
        header = "Test on %s - WER: %f, CER: %f, loss: %f" % (name, wer, cer, metrics[name]["loss"])
        assert header in log.read_text() and f"```text\n{header}\n" in md.read_text()
    text = md.read_text()
    assert f"| `{two}` | {metrics[str(two)]['wer']:f} |" in text
    assert text.count("Best WER: \n") == 2 and text.count(' - wav: file://') == 6
    assert not list(tmp_path.glob(".*.part"))


def test_cli_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint_dir", str(tmp_path), "--test_features", str(tmp_path)]) == 2
