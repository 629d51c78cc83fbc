"""DeepSpeech's features: numpy vs TensorFlow's own ops on real audio, and `dsflow features` shards."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import tensorflow as tf

from dsflow import UserError, cli
from dsflow.features import read_csv, write_features
from dsflow.mfcc import mfcc
from tests.conftest import LDC, ROOT

# Both sides do the same float64 arithmetic and round to float32 at the same two points
# (spectrogram, output); only the FFT differs (pocketfft vs the kernel's Ooura FFT), by ~1e-16
# relative, which can at most flip the last bit of a float32. The features are within |64|,
# where a float32 step is 7.6e-6: so allow ~1-2 float32 steps and nothing more.
TIGHT = dict(rtol=1e-6, atol=1e-5)


def deepspeech_features(samples: np.ndarray, rate: int, window: int, stride: int, scale=32767) -> np.ndarray:
    """util/feeding.py audio_to_features on util/audio.py pcm_to_np's output, in TF 2."""
    audio = samples.astype(np.float32)[:, None] / np.float32(scale)  # pcm_to_np: int16 / iinfo(int16).max
    spectrogram = tf.raw_ops.AudioSpectrogram(input=audio, window_size=window, stride=stride,
                                              magnitude_squared=True)
    features = tf.raw_ops.Mfcc(spectrogram=spectrogram, sample_rate=rate, dct_coefficient_count=26,
                               upper_frequency_limit=rate / 2)
    return tf.reshape(features, [-1, 26]).numpy()


def read16(name):
    samples, rate = sf.read(LDC / name, dtype="int16")
    return samples, rate


def test_equals_deepspeech_ops_16k():
    samples, rate = read16("LDC93S1.wav")
    ours = mfcc(samples, rate)
    assert ours.shape == (145, 26) and ours.dtype == np.float32
    ref = deepspeech_features(samples, rate, 512, 320)
    np.testing.assert_allclose(ours, ref, **TIGHT)
    # /32768 (decode_wav, the native client) instead of /32767 would be outside the tolerance
    assert not np.allclose(ours, deepspeech_features(samples, rate, 512, 320, scale=32768), **TIGHT)


def test_equals_deepspeech_ops_8k():
    samples, rate = read16("LDC93S1_pcms16le_1_8000.wav")
    assert rate == 8000
    ours = mfcc(samples, rate)  # 32 ms / 20 ms at 8 kHz: 256 / 160 samples
    assert ours.shape == (145, 26)
    np.testing.assert_allclose(ours, deepspeech_features(samples, rate, 256, 160), **TIGHT)


def test_equals_deepspeech_ops_on_edge_cases():
    samples, rate = read16("LDC93S1.wav")
    noise = np.random.default_rng(0).integers(-3, 4, 16000).astype(np.int16)
    silence_then_speech = np.concatenate([np.zeros(8000, np.int16), samples[:20000]])
    loud = np.clip(samples.astype(np.int32) * 40, -32768, 32767).astype(np.int16)  # clipped
    for audio in (noise, silence_then_speech, loud, samples[:512], samples[:831], np.tile(samples, 3)):
        ours = mfcc(audio, rate)
        assert ours.shape == (1 + (len(audio) - 512) // 320, 26)
        np.testing.assert_allclose(ours, deepspeech_features(audio, rate, 512, 320), **TIGHT)
    # a window that is not a power of two is zero-padded to the next one (20 ms at 8 kHz: 160 -> 256)
    samples8, _ = read16("LDC93S1_pcms16le_1_8000.wav")
    np.testing.assert_allclose(mfcc(samples8, 8000, 20, 10), deepspeech_features(samples8, 8000, 160, 80), **TIGHT)
    assert mfcc(samples[:511], rate).shape == (0, 26)


def test_windows_must_be_whole_samples():
    samples, _ = read16("LDC93S1.wav")
    with pytest.raises(ValueError, match="1411.2 samples"):
        mfcc(samples, 44100)  # 32 ms at 44.1 kHz
    with pytest.raises(ValueError, match="feature_win_step=20.01 ms"):
        mfcc(samples, 16000, 32, 20.01)
    with pytest.raises(ValueError, match="mono"):
        mfcc(np.stack([samples, samples], axis=1), 16000)


# ---- dsflow features -------------------------------------------------------------------------

def make_split(folder, sizes):
    """Clips cut from LDC93S1 (clip i is 0.5 + 0.25 i seconds); CSV lists them with the given wav_filesize."""
    samples, rate = read16("LDC93S1.wav")
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, size in enumerate(sizes):
        name = f"sub/clip{i}.wav" if i % 2 else f"clip{i}.wav"
        sf.write(folder / name, samples[: int((0.5 + 0.25 * i) * rate)], rate, subtype="PCM_16")
        rows.append(f"{name},{size},clip {i}")
    csv = folder / "split.csv"
    csv.write_text("wav_filename,wav_filesize,transcript\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return csv


def records(path):
    spec = {"features": tf.io.FixedLenFeature([], tf.string), "n_frames": tf.io.FixedLenFeature([], tf.int64),
            "transcript": tf.io.FixedLenFeature([], tf.string),
            "wav_filename": tf.io.FixedLenFeature([], tf.string), "duration": tf.io.FixedLenFeature([], tf.float32)}
    for raw in tf.data.TFRecordDataset(str(path)):
        ex = tf.io.parse_single_example(raw, spec)
        yield {"features": np.frombuffer(ex["features"].numpy(), "<f4").reshape(-1, 26),
               "n_frames": int(ex["n_frames"]), "transcript": ex["transcript"].numpy().decode(),
               "wav_filename": ex["wav_filename"].numpy().decode(), "duration": float(ex["duration"])}


def test_sorted_by_filesize_then_csv_order_and_sharded_by_seconds(tmp_path):
    sizes = [500, 100, 300, 100, 200, 300, 50, 400]  # ties: rows 1 & 3, rows 2 & 5
    csv = make_split(tmp_path / "data", sizes)
    out = tmp_path / "features" / "train"
    assert cli.main(["features", "--csv", str(csv), "--out_dir", str(out), "--threads", "2",
                     "--shard_seconds", "3"]) == 0
    index = pd.read_csv(out / "index.csv", keep_default_na=False)
    order = [6, 1, 3, 4, 2, 5, 7, 0]
    assert index.transcript.tolist() == [f"clip {i}" for i in order]
    assert index.wav_filesize.tolist() == sorted(sizes)
    wavs = [str((tmp_path / "data" / (f"sub/clip{i}.wav" if i % 2 else f"clip{i}.wav")).resolve()) for i in order]
    assert index.wav_filename.tolist() == wavs
    durations = [0.5 + 0.25 * i for i in order]
    assert index.duration.tolist() == pytest.approx(durations)
    assert index.n_frames.tolist() == [1 + (int(d * 16000) - 512) // 320 for d in durations]
    # a new shard starts once the current one holds >= 3 s of audio
    expected, shard, held = [], 0, 0.0
    for d in durations:
        if held >= 3:
            shard, held = shard + 1, 0.0
        expected.append(f"shard-{shard:05d}.tfrecord")
        held += d
    assert index.shard.tolist() == expected and shard >= 2  # 3 shards or more
    assert sorted(p.name for p in out.iterdir()) == sorted({*expected, "index.csv", "meta.json"})
    # the shards, read one after another, hold the index's rows in order, with the exact features
    got = [r for name in dict.fromkeys(expected) for r in records(out / name)]
    assert [r["wav_filename"] for r in got] == wavs
    assert [r["transcript"] for r in got] == index.transcript.tolist()
    assert [r["n_frames"] for r in got] == index.n_frames.tolist()
    assert [r["duration"] for r in got] == pytest.approx(durations)
    for r in got:
        samples, rate = sf.read(r["wav_filename"], dtype="int16")
        np.testing.assert_array_equal(r["features"], mfcc(samples, rate))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == 8 and meta["n_input"] == 26 and meta["sample_rate"] == 16000
    assert meta["total_seconds"] == pytest.approx(sum(durations))
    assert (meta["win_len_ms"], meta["win_step_ms"]) == (32, 20)
    assert not [p for p in out.parent.iterdir() if p.name != "train"]  # no temporary folders left


def test_the_8k_copy_with_its_own_rate(ldc, tmp_path):
    (ldc / "ldc8k.csv").write_text("wav_filename,wav_filesize,transcript\n"
                                   "LDC93S1_pcms16le_1_8000.wav,46876,she had your dark suit\n")
    index = write_features(ldc / "ldc8k.csv", tmp_path / "out", sample_rate=8000)
    assert index.n_frames.tolist() == [145]
    (record,) = records(tmp_path / "out" / "shard-00000.tfrecord")
    samples, _ = read16("LDC93S1_pcms16le_1_8000.wav")
    np.testing.assert_allclose(record["features"], deepspeech_features(samples, 8000, 256, 160), **TIGHT)


def test_corrupt_wav_fails_naming_it_and_leaves_nothing(tmp_path, capsys):
    csv = make_split(tmp_path / "data", [1, 2, 3, 4])
    (tmp_path / "data" / "sub" / "clip3.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    out = tmp_path / "features" / "dev"
    with pytest.raises(UserError, match=r"split.csv: row 4: .*sub/clip3.wav: cannot read the audio"):
        write_features(csv, out, threads=2)
    assert not (tmp_path / "features").exists() or not list((tmp_path / "features").iterdir())
    # an earlier complete output stays as it was; the CLI reports the error and exits 2
    out.mkdir(parents=True)
    (out / "index.csv").write_text("old\n")
    assert cli.main(["features", "--csv", str(csv), "--out_dir", str(out)]) == 2
    assert "sub/clip3.wav: cannot read the audio" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "features").iterdir()] == ["dev"]
    assert (out / "index.csv").read_text() == "old\n"


def test_wrong_format_or_missing_file_is_named(ldc, tmp_path):
    (ldc / "bad.csv").write_text("wav_filename,wav_filesize,transcript\n"
                                 "LDC93S1.wav,1,a\nLDC93S1_pcms16le_1_8000.wav,2,b\n")
    with pytest.raises(UserError, match=r"row 2: .*LDC93S1_pcms16le_1_8000.wav: expected a 16-bit mono WAV at "
                                        r"16000 Hz, got WAV PCM_16, 1 channel\(s\), 8000 Hz"):
        write_features(ldc / "bad.csv", tmp_path / "out")
    (ldc / "missing.csv").write_text("wav_filename,wav_filesize,transcript\nnope.wav,1,a\n")
    with pytest.raises(UserError, match=r"row 1: .*nope.wav: no such file"):
        write_features(ldc / "missing.csv", tmp_path / "out")
    (ldc / "size.csv").write_text("wav_filename,wav_filesize,transcript\nLDC93S1.wav,big,a\n")
    with pytest.raises(UserError, match=r"size.csv: row 1: wav_filesize 'big'"):
        write_features(ldc / "size.csv", tmp_path / "out")
    with pytest.raises(UserError, match="not a positive whole number"):
        write_features(ldc / "ldc93s1.csv", tmp_path / "out", sample_rate=44100)
    assert not (tmp_path / "out").exists()


def test_read_csv_without_filesize_keeps_file_order(tmp_path):
    (tmp_path / "a.csv").write_text("wav_filename,transcript\nz.wav,one\na.wav,two\n/abs/b.wav,three\n")
    rows = read_csv(tmp_path / "a.csv")
    assert rows.transcript.tolist() == ["one", "two", "three"]
    assert rows.wav_filename.tolist() == [str(tmp_path / "z.wav"), str(tmp_path / "a.wav"), "/abs/b.wav"]
    assert rows.wav_filesize.tolist() == [0, 0, 0]


def test_records_are_what_tensorflow_writes(tmp_path):
    """The workers' hand-framed tf.train.Example records: parsed by TF's own parser, framed like TF's writer."""
    from dsflow.dataset import example, record

    rng = np.random.default_rng(0)
    for frames, transcript in ((0, ""), (1, "a"), (300, "naïve café"), (20000, "x" * 200)):
        features = rng.normal(size=(frames, 26)).astype(np.float32)
        data = example(features, transcript, "/data/ü/clip.wav", 1.23)
        parsed = tf.train.Example.FromString(data)
        expected = tf.train.Example(features=tf.train.Features(feature={
            "features": tf.train.Feature(bytes_list=tf.train.BytesList(value=[features.tobytes()])),
            "n_frames": tf.train.Feature(int64_list=tf.train.Int64List(value=[frames])),
            "transcript": tf.train.Feature(bytes_list=tf.train.BytesList(value=[transcript.encode()])),
            "wav_filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=["/data/ü/clip.wav".encode()])),
            "duration": tf.train.Feature(float_list=tf.train.FloatList(value=[1.23])),
        }))
        assert parsed == expected
        with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
            writer.write(data)
        assert record(data) == (tmp_path / "tf.tfrecord").read_bytes()


def test_one_or_two_workers_write_the_same_bytes(tmp_path):
    csv = make_split(tmp_path / "data", list(range(40, 0, -1)))
    write_features(csv, tmp_path / "one", threads=1, shard_seconds=20)
    write_features(csv, tmp_path / "two", threads=2, shard_seconds=20)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len([n for n in names if n.startswith("shard-")]) >= 2
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in names:
        if name != "meta.json":
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_extensible_wav_is_read_like_plain_pcm(ldc, tmp_path):
    """WAVE_FORMAT_EXTENSIBLE and RF64 headers (validation accepts them; the stdlib reader does not) go
    through soundfile: same samples, same features."""
    samples, rate = read16("LDC93S1.wav")
    for name, kind in (("a.wav", "WAV"), ("b.wav", "WAVEX"), ("c.wav", "RF64")):
        sf.write(tmp_path / name, samples, rate, format=kind, subtype="PCM_16")
    assert (tmp_path / "b.wav").read_bytes()[20:22] == b"\xfe\xff"  # format tag 0xFFFE: extensible
    assert (tmp_path / "c.wav").read_bytes()[:4] == b"RF64"
    rows = "".join(f"{n},{(tmp_path / n).stat().st_size},she had\n" for n in ("a.wav", "b.wav", "c.wav"))
    (tmp_path / "s.csv").write_text("wav_filename,wav_filesize,transcript\n" + rows)
    write_features(tmp_path / "s.csv", tmp_path / "out")
    plain, extensible, rf64 = records(tmp_path / "out" / "shard-00000.tfrecord")
    np.testing.assert_array_equal(plain["features"], mfcc(samples, rate))
    np.testing.assert_array_equal(extensible["features"], plain["features"])
    np.testing.assert_array_equal(rf64["features"], plain["features"])


def test_the_features_job_runs_without_tensorflow(tmp_path):
    """The job imports no TensorFlow (2-4 s per job and per worker, and GPU memory on a GPU machine). One
    process here, so that the workers' code runs in the process that is checked."""
    import subprocess
    import sys

    csv = make_split(tmp_path / "data", [3, 2, 1])
    probe = ("import sys, dsflow.features as F\n"
             "F.write_features(sys.argv[1], sys.argv[2], threads=1)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n")
    done = subprocess.run([sys.executable, "-c", probe, str(csv), str(tmp_path / "out")], capture_output=True,
                          text=True, check=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert done.stdout.strip() == "[]"
    assert len(list(records(tmp_path / "out" / "shard-00000.tfrecord"))) == 3


def test_spectrogram_then_mfcc_is_mfcc_exactly():
    """The two ops one at a time (for spectrogram augmentations) give the fused `mfcc` bit for bit, and the
    spectrogram is DeepSpeech's AudioSpectrogram."""
    from dsflow.mfcc import mfcc_of_spectrogram, spectrogram

    for name, window, stride in (("LDC93S1.wav", 512, 320), ("LDC93S1_pcms16le_1_8000.wav", 256, 160)):
        samples, rate = read16(name)
        power = spectrogram(samples, rate)
        np.testing.assert_array_equal(mfcc_of_spectrogram(power, rate), mfcc(samples, rate))
        audio = samples.astype(np.float32)[:, None] / np.float32(32767)
        ops = tf.raw_ops.AudioSpectrogram(input=audio, window_size=window, stride=stride, magnitude_squared=True)
        np.testing.assert_allclose(power, ops.numpy()[0], rtol=1e-5, atol=1e-6 * float(power.max()))


def test_the_next_run_removes_what_a_killed_job_left(tmp_path):
    """A features job killed by SIGKILL mid-write leaves its temporary folder; the next run of that output removes it
    (not another output's)."""
    csv = make_split(tmp_path / "data", [1, 2])
    out = tmp_path / "features" / "dev"
    killed = [tmp_path / "features" / ".dev.partial-k1ll3d", tmp_path / "features" / ".dev.old-k1ll3d"]
    other = tmp_path / "features" / ".train.partial-running"
    for d in (*killed, other):
        d.mkdir(parents=True)
        (d / "shard-00000.tfrecord").write_bytes(bytes(1000))
    write_features(csv, out, threads=1)
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [".train.partial-running", "dev"]
