"""Validation on real bad inputs: each reason is triggered by a real file or row."""

import json
import shutil
import subprocess

import pandas as pd
import pytest
import soundfile as sf

from dsflow import UserError
from dsflow.alphabet import Alphabet
from dsflow.validate import ctc_min_frames, n_frames, validate
from tests.conftest import DATA

TEXT = "she had your dark suit in greasy wash water all year"
ALPHABET = Alphabet.from_file(DATA / "alphabet.txt")


def run(tmp_path, rows, **kw):
    """Write rows to a CSV in tmp_path/ldc93s1, validate it, return (summary, rejects, validated)."""
    csv = tmp_path / "ldc93s1" / "in.csv"
    with open(csv, "w", encoding="utf-8") as f:
        f.write("wav_filename,wav_filesize,transcript\n")
        for wav, text in rows:
            p = tmp_path / "ldc93s1" / wav
            size = p.stat().st_size if p.exists() else 0
            f.write(f"{wav},{size},{text}\n")
    out = tmp_path / "out"
    kw.setdefault("split", "train")
    summary = validate(
        kw.pop("split"), [str(csv)], kw.pop("alphabet", ALPHABET), str(out / "v.csv"), str(out / "rej.tsv"),
        str(out / "sum.json"), str(out / "audio"), **kw,
    )
    rejects = pd.read_csv(out / "rej.tsv", sep="\t", dtype=str, keep_default_na=False)
    validated = pd.read_csv(out / "v.csv", dtype=str, keep_default_na=False)
    return summary, rejects, validated


def good(ldc):
    """A clean row of its own audio (a split must keep at least one row): LDC93S1's first 2.5 s."""
    if not (ldc / "good.wav").exists():
        subprocess.run(["sox", str(ldc / "LDC93S1.wav"), str(ldc / "good.wav"), "trim", "0", "2.5"], check=True)
    return "good.wav", "she had your dark suit"


def reasons(rejects, wav):
    return dict(zip(rejects[rejects.wav_filename == wav].reason, rejects[rejects.wav_filename == wav].action))


def test_clean_row_passes_and_paths_are_relative_to_the_output_csv(ldc, tmp_path):
    summary, rejects, validated = run(tmp_path, [("LDC93S1.wav", TEXT)])
    assert summary["rows_kept"] == 1 and rejects.empty
    wav = (tmp_path / "out" / validated.wav_filename[0]).resolve()
    assert wav == (ldc / "LDC93S1.wav").resolve()
    assert validated.wav_filesize[0] == "93638"
    assert summary["hours"] == pytest.approx(46797 / 16000 / 3600, abs=1e-4)


def test_broken_files_are_dropped_with_their_reason(ldc, tmp_path):
    raw = (ldc / "LDC93S1.wav").read_bytes()
    (ldc / "truncated.wav").write_bytes(raw[:50000])
    (ldc / "header_only.wav").write_bytes(raw[:44])  # a complete header with no samples after it
    (ldc / "random.wav").write_bytes(bytes(range(256)) * 20)
    (ldc / "empty.wav").write_bytes(b"")
    (ldc / "notes.wav").write_text("this is a text file\n")
    rows = [(n, TEXT) for n in ("truncated.wav", "header_only.wav", "random.wav", "empty.wav", "notes.wav",
                                "missing.wav", "LDC93S1.wav")]
    summary, rejects, validated = run(tmp_path, rows)
    assert reasons(rejects, "truncated.wav") == {"truncated": "dropped"}
    assert "46797" in rejects[rejects.reason == "truncated"].detail.iloc[0]
    assert reasons(rejects, "header_only.wav") == {"truncated": "dropped"}
    assert reasons(rejects, "random.wav") == {"not_wav": "dropped"}
    assert reasons(rejects, "notes.wav") == {"not_wav": "dropped"}
    assert reasons(rejects, "empty.wav") == {"empty_file": "dropped"}
    assert reasons(rejects, "missing.wav") == {"missing_file": "dropped"}
    assert list(validated.wav_filename.str.split("/").str[-1]) == ["LDC93S1.wav"]
    assert summary["rows"] == 7 and summary["rows_dropped"] == 6
    assert rejects.row.tolist() == ["1", "2", "3", "4", "5", "6"]


def test_zero_length_audio(ldc, tmp_path):
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(ldc / "silence0.wav"), "trim", "0", "0"],
                   check=True)
    assert sf.info(str(ldc / "silence0.wav")).frames == 0
    _, rejects, _ = run(tmp_path, [("silence0.wav", "a"), good(ldc)])
    assert reasons(rejects, "silence0.wav") == {"no_audio": "dropped"}


def test_wrong_rate_and_stereo_are_converted(ldc, tmp_path):
    summary, rejects, validated = run(tmp_path, [("LDC93S1_pcms16le_1_8000.wav", TEXT),
                                                 ("LDC93S1_pcms16le_2_44100.wav", TEXT)])
    assert reasons(rejects, "LDC93S1_pcms16le_1_8000.wav") == {"wrong_sample_rate": "converted"}
    assert reasons(rejects, "LDC93S1_pcms16le_2_44100.wav") == {"wrong_sample_rate": "converted",
                                                                 "wrong_channels": "converted"}
    assert len(validated) == 2
    for wav in validated.wav_filename:
        info = sf.info(str(tmp_path / "out" / wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.duration == pytest.approx(2.925, abs=0.01)


def test_wrong_rate_and_stereo_are_rejected_without_normalize_sample_rate(ldc, tmp_path):
    summary, rejects, validated = run(tmp_path, [("LDC93S1_pcms16le_1_8000.wav", TEXT),
                                                 ("LDC93S1_pcms16le_2_44100.wav", TEXT), ("LDC93S1.wav", TEXT)],
                                      normalize_sample_rate=False)
    assert reasons(rejects, "LDC93S1_pcms16le_1_8000.wav") == {"wrong_sample_rate": "dropped"}
    assert reasons(rejects, "LDC93S1_pcms16le_2_44100.wav") == {"wrong_sample_rate": "dropped",
                                                                 "wrong_channels": "dropped"}
    assert len(validated) == 1 and not list((tmp_path / "out" / "audio").glob("*.wav"))


def test_float_wav_is_converted_to_pcm16(ldc, tmp_path):
    subprocess.run(["sox", str(ldc / "LDC93S1.wav"), "-e", "floating-point", "-b", "32", str(ldc / "f32.wav")],
                   check=True)
    _, rejects, validated = run(tmp_path, [("f32.wav", TEXT)])
    assert reasons(rejects, "f32.wav") == {"wrong_sample_format": "converted"}
    assert sf.info(str(tmp_path / "out" / validated.wav_filename[0])).subtype == "PCM_16"


def test_transcript_problems(ldc, tmp_path):
    summary, rejects, _ = run(tmp_path, [("LDC93S1.wav", "she had your dárk suit in 2 greasy"), good(ldc)])
    row = rejects[rejects.reason == "not_in_alphabet"]
    assert len(row) == 1 and "'á' (U+00E1)" in row.detail.iloc[0] and "'2'" in row.detail.iloc[0]
    assert summary["characters_not_in_alphabet"] == {"á": 1, "2": 1}


def test_empty_transcript_and_not_nfkc(ldc, tmp_path):
    for name in ("a.wav", "b.wav"):
        shutil.copy(ldc / "LDC93S1_pcms16le_1_8000.wav", ldc / name)
    # 'ﬁ' (U+FB01 ligature) is "fi" under NFKC
    _, rejects, _ = run(tmp_path, [("a.wav", ""), ("LDC93S1.wav", "the \ufb01sh"), good(ldc)])
    assert reasons(rejects, "a.wav")["empty_transcript"] == "dropped"
    nfkc = rejects[rejects.reason == "not_nfkc"]
    assert len(nfkc) == 1 and nfkc.detail.iloc[0] == "NFKC form: 'the fish' (U+FB01 -> U+0066 U+0069)"
    # decomposed u + combining diaeresis: looks like the composed ü, differs in code points
    _, rejects, _ = run(tmp_path, [("LDC93S1.wav", "gru\u0308n"), ("good.wav", "grün")], alphabet=Alphabet(list("grün")))
    assert rejects.detail.iloc[0] == "NFKC form: 'grün' (U+0075 U+0308 -> U+00FC)"


def test_a_split_that_keeps_no_row_fails_with_its_drop_summary(ldc, tmp_path):
    with pytest.raises(UserError, match=r"validation of test kept none of the 2 rows of .*in.csv \(missing_file "
                                        r"\(dropped\) 1, not_in_alphabet \(dropped\) 1\)"):
        run(tmp_path, [("nope.wav", TEXT), ("LDC93S1.wav", "ÜBER")], split="test")
    assert not (tmp_path / "out" / "v.csv").exists()


def test_transcript_longer_than_frames(ldc, tmp_path):
    subprocess.run(["sox", str(ldc / "LDC93S1.wav"), str(ldc / "short.wav"), "trim", "0", "0.2"], check=True)
    # 0.2 s = 3200 samples -> 1 + (3200 - 512) // 320 = 9 frames
    _, rejects, _ = run(tmp_path, [("short.wav", "a b c d e"), ("LDC93S1.wav", "aab")])
    assert rejects.empty  # 9 labels fit in 9 frames
    _, rejects, _ = run(tmp_path, [("short.wav", "a b c d ef"), ("LDC93S1.wav", "aab")])
    row = rejects[rejects.reason == "transcript_too_long"]
    assert row.wav_filename.tolist() == ["short.wav"]
    assert row.detail.iloc[0] == "10 CTC steps needed, 9 frames"


def test_ctc_frame_arithmetic():
    assert n_frames(46797, 512, 320) == 145  # LDC93S1: DeepSpeech's 145 feature frames
    assert n_frames(511, 512, 320) == 0
    assert ctc_min_frames("abc") == 3
    assert ctc_min_frames("aab") == 4  # a blank must separate repeated labels
    assert ctc_min_frames("see all") == 9


def test_duplicates(ldc, tmp_path):
    shutil.copy(ldc / "LDC93S1.wav", ldc / "copy.wav")
    _, rejects, validated = run(tmp_path, [("LDC93S1.wav", TEXT), ("LDC93S1.wav", TEXT), ("copy.wav", TEXT)])
    assert rejects.reason.tolist() == ["duplicate_row", "duplicate_audio"]
    assert "row 1" in rejects.detail.iloc[0] and "LDC93S1.wav" in rejects.detail.iloc[1]
    assert len(validated) == 1


def test_stale_filesize_is_fixed_and_listed(ldc, tmp_path):
    csv = ldc / "in.csv"
    csv.write_text(f"wav_filename,wav_filesize,transcript\nLDC93S1.wav,12,{TEXT}\n")
    out = tmp_path / "out"
    validate("train", [str(csv)], ALPHABET, str(out / "v.csv"), str(out / "r.tsv"), str(out / "s.json"),
             str(out / "a"))
    rejects = pd.read_csv(out / "r.tsv", sep="\t")
    assert rejects.reason.tolist() == ["filesize_mismatch"] and rejects.action.tolist() == ["fixed"]
    assert pd.read_csv(out / "v.csv").wav_filesize.tolist() == [93638]


def test_leakage_from_train_is_listed(ldc, tmp_path):
    shutil.copy(ldc / "LDC93S1.wav", ldc / "test_copy.wav")
    train = ldc / "train.csv"
    train.write_text(f"wav_filename,wav_filesize,transcript\nLDC93S1.wav,93638,{TEXT}\n")
    summary, rejects, validated = run(tmp_path, [("test_copy.wav", "other words"), ("LDC93S1_pcms16le_1_8000.wav", TEXT)],
                                      split="test", train_csvs=[str(train)])
    assert reasons(rejects, "test_copy.wav") == {"audio_in_train": "kept"}
    assert rejects[rejects.reason == "audio_in_train"].detail.iloc[0] == "same content"
    assert reasons(rejects, "LDC93S1_pcms16le_1_8000.wav")["sentence_in_train"] == "kept"
    assert len(validated) == 2


def test_policy_fail_lists_every_bad_row_and_writes_nothing(ldc, tmp_path, caplog):
    with pytest.raises(UserError, match="2 of 3 rows have errors"):
        run(tmp_path, [("LDC93S1.wav", TEXT), ("missing.wav", TEXT), ("LDC93S1_pcms16le_1_8000.wav", "ÿ")],
            policy="fail")
    assert not (tmp_path / "out" / "v.csv").exists()


def test_bad_header_names_the_file_and_columns(ldc, tmp_path):
    csv = ldc / "bad.csv"
    csv.write_text("filename,size,text\nLDC93S1.wav,93638,x\n")
    with pytest.raises(UserError, match=r"bad.csv: header must be wav_filename,wav_filesize,transcript; "
                                        r"missing \['wav_filename', 'transcript'\], found \['filename'"):
        validate("train", [str(csv)], ALPHABET, *(str(tmp_path / n) for n in ("v.csv", "r.tsv", "s.json", "a")))


def test_summary_counts_rejects_by_reason(ldc, tmp_path):
    summary, _, _ = run(tmp_path, [("missing.wav", TEXT), ("LDC93S1_pcms16le_1_8000.wav", TEXT)])
    on_disk = json.loads((tmp_path / "out" / "sum.json").read_text())
    assert on_disk == summary
    assert summary["problems"] == {"missing_file (dropped)": 1, "wrong_sample_rate (converted)": 1}
