"""`dsflow import-cv` on a tiny Common Voice folder of real MP3s (espeak-ng / sox synth, encoded by sox+lame)."""

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from dsflow import UserError, audio, importer
from dsflow.atomic import atomic_open
from dsflow.cli import main

ALPHABET = Path(__file__).resolve().parents[1] / "data" / "alphabet.txt"
HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment\n"


def _mp3_from_wav(wav: Path, mp3: Path) -> None:
    # Common Voice clips are 48 kHz mono MP3s
    subprocess.run(["sox", str(wav), "-r", "48000", "-c", "1", "-C", "64", str(mp3)], check=True)
    wav.unlink()


def _speech(mp3: Path, words: str) -> None:
    wav = mp3.with_suffix(".tmp.wav")
    subprocess.run(["espeak-ng", "-w", str(wav), words], check=True)
    _mp3_from_wav(wav, mp3)


def _tone(mp3: Path, secs: float) -> None:
    wav = mp3.with_suffix(".tmp.wav")
    subprocess.run(["sox", "-n", "-r", "22050", str(wav), "synth", str(secs), "sine", "440"], check=True)
    _mp3_from_wav(wav, mp3)


# (split, clip, sentence, expected reason or "" when imported, expected transcript)
ROWS = [
    ("train", "good.mp3", 'He said "hello world".', "", "he said hello world"),
    ("train", "digit.mp3", 'I have "3" cats', "label_invalid", None),
    ("train", "accent.mp3", "café au lait", "not_in_alphabet", "cafe au lait"),
    ("train", "short.mp3", "this sentence is far too long for a short clip", "too_short", None),
    ("train", "long.mp3", "a long tone", "too_long", None),
    ("train", "corrupt.mp3", "random bytes here", "conversion_failed", None),
    ("train", "empty.mp3", "an empty file", "conversion_failed", None),
    ("train", "missing.mp3", "no such clip", "missing_audio", None),
    ("dev", "dev1.mp3", "Good morning, Sir!", "", "good morning sir"),
    ("test", "test1.mp3", "the birch canoe slid", "", "the birch canoe slid"),
]


@pytest.fixture(scope="session")
def cv_release(tmp_path_factory):
    """A read-only Common Voice release folder: {train,dev,test}.tsv and clips/ covering every reason."""
    root = tmp_path_factory.mktemp("cv") / "cv-corpus-test" / "en"
    clips = root / "clips"
    clips.mkdir(parents=True)
    for split, clip, sentence, _, _ in ROWS:
        mp3 = clips / clip
        if clip in ("good.mp3", "accent.mp3", "digit.mp3", "dev1.mp3", "test1.mp3"):
            _speech(mp3, sentence)
        elif clip == "short.mp3":
            _tone(mp3, 0.2)
        elif clip == "long.mp3":
            _tone(mp3, 11)
        elif clip == "corrupt.mp3":
            mp3.write_bytes(random.Random(0).randbytes(4000))
        elif clip == "empty.mp3":
            mp3.write_bytes(b"")
    for split in ("train", "dev", "test"):
        lines = [f"client{i}\t{clip}\t{sentence}\t2\t0\t\t\t\ten\t\n"
                 for i, (s, clip, sentence, _, _) in enumerate(ROWS) if s == split]
        (root / f"{split}.tsv").write_text(HEADER + "".join(lines), encoding="utf-8")
    for path in [*clips.iterdir(), clips, root]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    yield root
    for path in [root, clips]:
        path.chmod(0o755)


def _run(cv, tmp_path, *extra, name="out"):
    """`dsflow import-cv` with the alphabet, 2 threads: (exit status, out dir, wav dir, its log)."""
    out, wavs, logfile = tmp_path / name, tmp_path / "wavs", tmp_path / f"{name}.log"
    rc = main(["--log", str(logfile), "import-cv", "--cv_dir", str(cv), "--out_dir", str(out),
               "--wav_dir", str(wavs), "--alphabet_config_path", str(ALPHABET), "--threads", "2", *extra])
    return rc, out, wavs, logfile.read_text()


def _read(path, sep=","):
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)


def test_import_every_reason(cv_release, tmp_path):
    rc, out, wavs, log = _run(cv_release, tmp_path)
    assert rc == 0
    for split in ("train", "dev", "test"):
        frame = _read(out / f"{split}.csv")
        assert list(frame.columns) == ["wav_filename", "wav_filesize", "transcript"]
        expected = [(clip, t) for s, clip, _, reason, t in ROWS if s == split and not reason]
        assert [(Path(f).name, t) for f, t in zip(frame.wav_filename, frame.transcript)] == [
            (clip.replace(".mp3", ".wav"), t) for clip, t in expected]
        for f, size in zip(frame.wav_filename, frame.wav_filesize):
            assert not os.path.isabs(f)
            wav = out / f  # DeepSpeech resolves relative paths against the CSV's folder
            assert wav.resolve().parent == wavs.resolve()
            assert int(size) == wav.stat().st_size
            info = sf.info(str(wav))
            assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
            assert info.frames > 16000 * 0.5
            soxi = [subprocess.run(["soxi", flag, str(wav)], capture_output=True, text=True).stdout.strip()
                    for flag in ("-r", "-c", "-b")]
            assert soxi == ["16000", "1", "16"]

    rejected = _read(out / "rejected.tsv", sep="\t")
    assert list(rejected.columns) == ["split", "tsv_row", "path", "sentence", "reason", "detail"]
    # rejected.tsv is a standard TSV (fields with quotes are quoted), so it reads back as written
    got = {(r.split, r.path): (r.reason, r.tsv_row, r.sentence) for r in rejected.itertuples()}
    train_rows = [r for r in ROWS if r[0] == "train"]
    assert got == {("train", clip): (reason, str(train_rows.index(row) + 1), sentence)
                   for row in train_rows for split, clip, sentence, reason, _ in [row] if reason}
    detail = dict(zip(rejected.path, rejected.detail))
    assert detail["digit.mp3"] == "contains '3'"
    assert detail["accent.mp3"] == "characters not in the alphabet: 'é'"
    assert "20-ms steps < 46 characters" in detail["short.mp3"]
    assert detail["long.mp3"].startswith("11.0") and detail["long.mp3"].endswith("> 10 s")
    assert detail["corrupt.mp3"].startswith("sox exited with 2")
    assert detail["empty.mp3"].startswith("sox exited with 2")
    assert detail["missing.mp3"].endswith("missing.mp3 not found")

    summary = json.loads((out / "summary.json").read_text())
    train = summary["splits"]["train"]
    assert (train["rows"], train["imported"]) == (8, 1)
    assert train["dropped"] == {"label_invalid": 1, "not_in_alphabet": 1, "missing_audio": 1,
                                "conversion_failed": 2, "too_short": 1, "too_long": 1}
    assert 0 < train["hours"] < train["total_hours"]
    assert summary["splits"]["dev"]["imported"] == summary["splits"]["test"]["imported"] == 1
    # label-rejected clips are not converted; corrupt/empty/missing leave no WAV behind
    assert sorted(p.name for p in wavs.iterdir()) == ["dev1.wav", "good.wav", "long.wav", "short.wav", "test1.wav"]
    # nothing is written into the release folder (read-only, but root could write there anyway)
    assert sorted(p.name for p in cv_release.rglob("*")) == sorted(
        ["clips", "train.tsv", "dev.tsv", "test.tsv"] + [clip for _, clip, *_ in ROWS if clip != "missing.mp3"])
    assert "train: Imported 1 samples." in log
    assert "train: Skipped 3 samples that failed upon conversion." in log
    assert "train: Skipped 2 samples that failed on transcript validation." in log
    assert "reusing 0 WAVs already in" in log and "1 MP3s missing, converting 7 with sox (2 threads)" in log


def test_normalize_rerun_reuses_wavs(cv_release, tmp_path):
    rc, out, wavs, _ = _run(cv_release, tmp_path)
    assert rc == 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in wavs.iterdir()}
    rc, out2, _, log = _run(cv_release, tmp_path, "--import_normalize", "true", name="out2")
    assert rc == 0
    # the 5 WAVs are reused as they are; accent.mp3 (its label passes now) is converted and the
    # corrupt and empty MP3s are tried again
    assert "reusing 5 WAVs already in" in log and "converting 3 with sox" in log
    assert {p.name: p.stat().st_mtime_ns for p in wavs.iterdir() if p.name in mtimes} == mtimes
    train = _read(out2 / "train.csv")
    assert list(train.transcript) == ["he said hello world", "cafe au lait"]
    assert "accent.mp3" not in set(_read(out2 / "rejected.tsv", sep="\t").path)


def test_no_alphabet_filter(cv_release, tmp_path):
    out, wavs = tmp_path / "out", tmp_path / "wavs"
    assert main(["import-cv", "--cv_dir", str(cv_release), "--out_dir", str(out), "--wav_dir", str(wavs),
                 "--import_filter_alphabet", "false", "--threads", "1"]) == 0
    assert "café au lait" in set(_read(out / "train.csv").transcript)


def test_ffmpeg_converter_matches(cv_release, tmp_path):
    rc, out, wavs, _ = _run(cv_release, tmp_path, "--converter", "ffmpeg")
    assert rc == 0
    rejected = _read(out / "rejected.tsv", sep="\t")
    assert dict(zip(rejected.path, rejected.reason))["corrupt.mp3"] == "conversion_failed"
    assert list(_read(out / "train.csv").transcript) == ["he said hello world"]
    assert sf.info(str(wavs / "good.wav")).samplerate == 16000


def test_failure_leaves_no_partial_wav_or_csv(cv_release, tmp_path, monkeypatch):
    real_run = subprocess.run
    calls, killed = [], []

    def dying_converter(cmd, **kwargs):
        if cmd[1:] == ["-h"]:
            return real_run(cmd, **kwargs)
        calls.append(cmd)
        if len(calls) == 2:  # the second conversion writes half a WAV, then the job is killed
            killed.append(Path(cmd[3]).stem + ".wav")  # sox -D -V1 SRC ... DST
            real_run(cmd, **kwargs)
            Path(cmd[-1]).write_bytes(Path(cmd[-1]).read_bytes()[:1000])
            raise KeyboardInterrupt
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(audio.subprocess, "run", dying_converter)
    out, wavs = tmp_path / "out", tmp_path / "wavs"
    with pytest.raises(KeyboardInterrupt):
        importer.import_cv(cv_release, out, wavs, None, threads=1)
    assert list(out.iterdir()) == []
    # the first conversion is complete; the killed one left nothing (a conversion queued behind it
    # may have started before the interrupt reached the main thread: it is complete too)
    finished = {p.name for p in wavs.iterdir()}
    assert killed == ["accent.wav"]
    assert "good.wav" in finished and "accent.wav" not in finished
    assert all(p.suffix == ".wav" and audio.wav_frames(p, 16000) > 0 for p in wavs.iterdir())

    monkeypatch.setattr(audio.subprocess, "run", real_run)
    importer.import_cv(cv_release, out, wavs, None, threads=1)
    assert (out / "train.csv").exists()
    assert not [p for p in wavs.iterdir() if p.suffix != ".wav"]


def test_atomic_open_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "train.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [target]


def _copy_release(cv_release, tmp_path):
    cv = tmp_path / "cv"
    shutil.copytree(cv_release, cv)
    for p in [cv, *cv.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return cv


def test_missing_dev_tsv_writes_header_only_csv(cv_release, tmp_path):
    cv = _copy_release(cv_release, tmp_path)
    (cv / "dev.tsv").unlink()
    rc, out, _, log = _run(cv, tmp_path)
    assert rc == 0
    assert (out / "dev.csv").read_text() == "wav_filename,wav_filesize,transcript\n"
    assert "dev.tsv: not found; writing a dev.csv without rows" in log


@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_train_or_test_tsv_is_user_error(cv_release, tmp_path, split):
    cv = _copy_release(cv_release, tmp_path)
    (cv / f"{split}.tsv").unlink()
    with pytest.raises(UserError, match=rf"{split}\.tsv: not found"):
        importer.import_cv(cv, tmp_path / "out", tmp_path / "wavs")
    assert _run(cv, tmp_path)[0] == 2


def test_tsv_without_columns_is_user_error(cv_release, tmp_path):
    cv = _copy_release(cv_release, tmp_path)
    (cv / "test.tsv").write_text("client_id\tfile\ttext\nc\tx.mp3\thello\n")
    with pytest.raises(UserError, match=r"test\.tsv: no column path, sentence \(columns found: "
                                        r"\['client_id', 'file', 'text'\]\)"):
        importer.import_cv(cv, tmp_path / "out", tmp_path / "wavs")


def test_alphabet_required_unless_filter_off(cv_release, tmp_path):
    logfile = tmp_path / "log"
    assert main(["--log", str(logfile), "import-cv", "--cv_dir", str(cv_release), "--out_dir", str(tmp_path / "o"),
                 "--wav_dir", str(tmp_path / "w")]) == 2
    assert "give --alphabet_config_path FILE, or --import_filter_alphabet false" in logfile.read_text()
    assert not (tmp_path / "o").exists()


def test_clean_label_matches_import_cv2():
    from dsflow.alphabet import Alphabet

    abc = Alphabet.from_file(ALPHABET)
    assert importer.clean_label("Hello-World!", abc) == ("hello world", "", "")
    assert importer.clean_label("a [b] 1", abc) == (None, "label_invalid", "contains '[]1'")
    assert importer.clean_label("...", abc) == (None, "label_invalid", "empty after cleaning")
    assert importer.clean_label("Ångström", abc)[1] == "not_in_alphabet"
    assert importer.clean_label("Ångström", abc, normalize=True) == ("angstrom", "", "")
    assert importer.clean_label("Ångström", None) == ("ångström", "", "")
