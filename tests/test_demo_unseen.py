"""`dsflow demo-corpus --unseen-speakers`: the held-out test set by speakers the demo never uses, read by import-cv."""

import csv
from pathlib import Path

from dsflow import demo
from dsflow.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "data" / "text" / "harvard_sentences.txt"


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_unseen_speakers_test_set_is_imported_as_a_test_split(tmp_path):
    out = tmp_path / "cv-corpus-demo-unseen" / "en"
    assert main(["demo-corpus", "--text", str(TEXT), "--out", str(out), "--limit_lists", "1", "--takes", "3",
                 "--threads", "2", "--unseen_speakers"]) == 0
    assert _rows(out / "train.tsv") == [] and _rows(out / "dev.tsv") == []
    test = _rows(out / "test.tsv")
    assert _rows(out / "validated.tsv") == test and len(test) == 30  # list 67: 10 sentences, 3 takes
    sentences = demo.read_sentences(TEXT)
    assert {r["sentence"] for r in test} == set(sentences[660:670])
    seen_ids = {demo.client_id(v, var) for v in demo.VOICES for var in demo.VARIANTS}
    synthesis = _rows(out / "synthesis.tsv")
    for row, s in zip(test, synthesis):
        assert s["voice"] in demo.UNSEEN_VOICES and s["variant"] in demo.UNSEEN_VARIANTS
        assert s["voice"] not in demo.VOICES and s["variant"] not in demo.VARIANTS
        assert row["client_id"] not in seen_ids and row["accent"] in {"scotland", "england", "other"}
        assert int(row["path"][len("common_voice_en_"):-4]) >= demo.UNSEEN_FIRST_CLIP
    assert len({r["client_id"] for r in test}) == 24 and len({s["voice"] for s in synthesis}) == 4

    imported = tmp_path / "import"
    assert main(["import-cv", "--cv_dir", str(out), "--out_dir", str(imported), "--wav_dir", str(tmp_path / "wav"),
                 "--alphabet_config_path", str(ROOT / "data/alphabet.txt"), "--threads", "2"]) == 0
    with open(imported / "test.csv", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 30
    with open(imported / "train.csv", encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == []
