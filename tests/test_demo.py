"""`dsflow demo-corpus`: espeak-ng speech laid out like a Common Voice 6.1 release folder."""

import csv
import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from dsflow import UserError, demo
from dsflow.cli import main
from dsflow.text import validate_label_eng

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "data" / "text" / "harvard_sentences.txt"
CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment"
CV_AGES = {"", "teens", "twenties", "thirties", "fourties", "fifties", "sixties", "seventies", "eighties", "nineties"}
CV_EN_ACCENTS = {"", "us", "england", "scotland", "canada", "australia", "indian", "african", "newzealand", "ireland",
                 "bermuda", "philippines", "hongkong", "wales", "malaysia", "singapore", "southatlandtic", "other"}
LIMIT, TAKES = 1, 2  # 10 sentences a split, 2 takes: 60 clips


def _build(out, *extra):
    return main(["demo-corpus", "--text", str(TEXT), "--out", str(out), "--limit_lists", str(LIMIT),
                 "--takes", str(TAKES), "--threads", "2", *extra])


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))  # how import_cv2 reads them


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "cv-corpus-demo" / "en"
    assert _build(out) == 0
    return out


def test_layout_and_columns_are_common_voices(corpus):
    assert sorted(p.name for p in corpus.iterdir()) == [
        "clips", "dev.tsv", "synthesis.tsv", "test.tsv", "train.tsv", "validated.tsv"]
    assert [p.name for p in corpus.parent.iterdir()] == ["en"]  # no temporary folder left beside it
    splits = {}
    for name in ["train", "dev", "test", "validated"]:
        lines = (corpus / f"{name}.tsv").read_text(encoding="utf-8").split("\n")
        assert lines[0] == CV_HEADER and lines[-1] == ""
        assert all(line.count("\t") == 9 for line in lines[1:-1])
        splits[name] = _rows(corpus / f"{name}.tsv")
    for name in ["train", "dev", "test"]:
        assert len(splits[name]) == LIMIT * 10 * TAKES
    assert splits["validated"] == splits["train"] + splits["dev"] + splits["test"]
    for row in splits["validated"]:
        assert re.fullmatch(r"[0-9a-f]{128}", row["client_id"])
        assert re.fullmatch(r"common_voice_en_\d{8}\.mp3", row["path"])
        assert (row["up_votes"], row["down_votes"], row["locale"], row["segment"]) == ("2", "0", "en", "")
        assert row["age"] in CV_AGES and row["accent"] in CV_EN_ACCENTS
        assert row["gender"] in {"male", "female"}
    paths = [r["path"] for r in splits["validated"]]
    assert len(set(paths)) == len(paths)
    assert sorted(p.name for p in (corpus / "clips").iterdir()) == sorted(paths)

    synthesis = _rows(corpus / "synthesis.tsv")
    assert list(synthesis[0]) == ["path", "voice", "variant", "rate", "pitch"]
    assert [s["path"] for s in synthesis] == paths
    speaker_of = {}
    for row, s in zip(splits["validated"], synthesis):
        assert s["voice"] in demo.VOICES and s["variant"] in demo.VARIANTS
        assert 130 <= int(s["rate"]) <= 190 and 0 <= int(s["pitch"]) <= 99
        assert row["gender"] == ("female" if s["variant"].startswith("f") else "male")
        # one client_id per synthetic speaker (voice + variant)
        assert speaker_of.setdefault(row["client_id"], (s["voice"], s["variant"])) == (s["voice"], s["variant"])
    assert len(speaker_of) > 1


def _decoded_seconds(path):
    raw = subprocess.run(["sox", str(path), "-t", "raw", "-e", "signed", "-b", "16", "-"], capture_output=True,
                         check=True).stdout
    return len(raw) / 2 / 48000


def test_clips_are_48k_mono_mp3s_of_plausible_length(corpus):
    rate = {s["path"]: int(s["rate"]) for s in _rows(corpus / "synthesis.tsv")}
    for row in _rows(corpus / "validated.tsv"):
        clip = corpus / "clips" / row["path"]
        probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json",
                                           str(clip)], capture_output=True, check=True, text=True).stdout)
        (stream,) = probe["streams"]
        assert probe["format"]["format_name"] == "mp3"
        assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == ("mp3", "48000", 1)
        info = subprocess.run(["soxi", "-r", str(clip)], capture_output=True, check=True, text=True).stdout
        assert info.strip() == "48000"
        seconds = _decoded_seconds(clip)
        expected = len(row["sentence"].split()) * 60 / rate[row["path"]]  # words at the clip's words/minute
        assert 0.4 * expected < seconds < 2.5 * expected, (row, seconds, expected)
        # import_cv2 keeps it: at most 10 s, and at least one 20 ms step per character of the label
        assert seconds <= 10 and int(seconds * 1000 / 10 / 2) >= len(validate_label_eng(row["sentence"]))


def test_splits_are_whole_harvard_lists(corpus):
    lines = TEXT.read_text(encoding="utf-8").splitlines()
    first = {"train": 0, "dev": 600, "test": 660}  # lists 1, 61, 67
    speakers = {}
    for split, start in first.items():
        rows = _rows(corpus / f"{split}.tsv")
        assert sorted({r["sentence"] for r in rows}) == sorted(lines[start:start + 10 * LIMIT])
        speakers[split] = {r["client_id"] for r in rows}
    assert speakers["dev"] <= speakers["train"] and speakers["test"] <= speakers["train"]


def test_full_plan_splits_and_speakers():
    clips = demo.plan(demo.read_sentences(TEXT), takes=3, seed=0)
    by_split = defaultdict(list)
    for c in clips:
        by_split[c.split].append(c)
    assert {s: len(c) for s, c in by_split.items()} == {"train": 1800, "dev": 180, "test": 180}
    assert {c.line for c in by_split["train"]} == set(range(1, 601))
    assert {c.line for c in by_split["dev"]} == set(range(601, 661))
    assert {c.line for c in by_split["test"]} == set(range(661, 721))
    sentences = {s: {c.sentence for c in cs} for s, cs in by_split.items()}
    assert not sentences["train"] & (sentences["dev"] | sentences["test"])
    every_speaker = {(v, var) for v in demo.VOICES for var in demo.VARIANTS}
    for cs in by_split.values():  # dev/test measure unseen sentences, not unseen speakers
        assert {(c.voice, c.variant) for c in cs} == every_speaker
    takes = defaultdict(list)
    for c in clips:
        takes[c.line].append(c)
    for cs in takes.values():  # the takes of a sentence differ in speaker and rate
        assert len({(c.voice, c.variant) for c in cs}) == len({c.rate for c in cs}) == 3
    assert len({c.path for c in clips}) == len(clips)


def test_same_seed_gives_the_same_corpus(corpus, tmp_path):
    again = tmp_path / "again"
    assert _build(again) == 0
    for name in ["train.tsv", "dev.tsv", "test.tsv", "validated.tsv", "synthesis.tsv"]:
        assert (again / name).read_bytes() == (corpus / name).read_bytes(), name
    for clip in (corpus / "clips").iterdir():
        assert (again / "clips" / clip.name).read_bytes() == clip.read_bytes(), clip.name
    other = demo.plan(demo.read_sentences(TEXT), TAKES, seed=1, limit_lists=LIMIT)
    assert [(c.voice, c.variant, c.rate, c.pitch) for c in other] != [
        (s["voice"], s["variant"], int(s["rate"]), int(s["pitch"])) for s in _rows(corpus / "synthesis.tsv")]


def test_rebuild_replaces_the_old_folder_only_when_complete(tmp_path, monkeypatch):
    out = tmp_path / "en"
    out.mkdir()
    (out / "old.txt").write_text("old")
    seen = []
    real = demo.synthesize

    def spy(clip, clips_dir):
        seen.append((out / "old.txt").exists())
        real(clip, clips_dir)

    monkeypatch.setattr(demo, "synthesize", spy)
    demo.build(TEXT, out, takes=1, limit_lists=1)
    assert seen and all(seen)  # the old folder stayed in place while the new one was built
    assert not (out / "old.txt").exists() and len(_rows(out / "validated.tsv")) == 30
    assert [p.name for p in tmp_path.iterdir()] == ["en"]


def test_no_output_when_espeak_is_missing(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sox").symlink_to(shutil.which("sox"))
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(UserError, match="espeak-ng is not on PATH"):
        demo.build(TEXT, tmp_path / "out" / "en", takes=1, limit_lists=1)
    assert list((tmp_path / "out").iterdir()) == []
    assert _build(tmp_path / "out" / "en") == 2  # the CLI reports it as a user error


def test_no_output_when_synthesis_fails_part_way(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "VOICES", {"en-us": "us", "xx-no-such-voice": "other"})
    monkeypatch.setattr(demo, "VARIANTS", ["m1"])
    # a seed whose first clip succeeds, so that the failure comes part way
    seed = next(s for s in range(10) if demo.plan(demo.read_sentences(TEXT), 2, s, 1)[0].voice == "en-us")
    done = []
    real = demo.synthesize
    monkeypatch.setattr(demo, "synthesize", lambda clip, d: (real(clip, d), done.append(clip)))
    out = tmp_path / "en"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(UserError, match=r"xx-no-such-voice\+m1.*failed"):
        demo.build(TEXT, out, takes=2, seed=seed, limit_lists=1, threads=1)
    assert done  # some clips were written before the failure
    assert [p.name for p in tmp_path.iterdir()] == ["en"] and [p.name for p in out.iterdir()] == ["old.txt"]


@pytest.mark.parametrize("content, message", [
    (None, "text file does not exist"),
    ("\n".join(["A sentence."] * 719) + "\n", "has 719 lines, expected 720"),
    ("\n".join(["A sentence."] * 721) + "\n", "has 721 lines, expected 720"),
    ("\n".join(["A sentence."] * 4 + [""] + ["A sentence."] * 715) + "\n", "row 5: empty line"),
    ("\n".join(["A sentence."] * 9 + ["Pick 2 apples."] + ["A sentence."] * 710) + "\n", "row 10: .*rejected"),
])
def test_bad_text_file_is_a_clear_error(tmp_path, content, message, caplog):
    text = tmp_path / "harvard.txt"
    if content is not None:
        text.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=f"{re.escape(str(text))}: {message}"):
        demo.build(text, tmp_path / "out", takes=1, limit_lists=1)
    assert not (tmp_path / "out").exists()
    assert main(["demo-corpus", "--text", str(text), "--out", str(tmp_path / "out")]) == 2


@pytest.mark.parametrize("takes", [0, len(demo.RATES) + 1])
def test_bad_takes_is_a_clear_error(takes):
    with pytest.raises(UserError, match=f"--takes {takes}: must be 1 to"):
        demo.plan(demo.read_sentences(TEXT), takes=takes, seed=0)
