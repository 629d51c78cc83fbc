"""The tf.data reader over `dsflow features` shards: DeepSpeech's order, padding, labels, batching."""

import numpy as np
import pytest
import soundfile as sf

from dsflow import UserError, dataset
from dsflow.alphabet import Alphabet
from dsflow.features import write_features
from dsflow.mfcc import mfcc
from tests.conftest import DATA, LDC

ALPHABET = Alphabet.from_file(DATA / "alphabet.txt")
# (seconds, wav_filesize, transcript): DeepSpeech's order is by wav_filesize, not by duration or CSV order
CLIPS = [(1.0, 300, "she had"), (0.6, 100, "your dark suit"), (2.0, 500, "in greasy"), (1.4, 200, "wash"),
         (0.8, 400, "water all year")]
ORDER = [1, 3, 0, 4, 2]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    samples, rate = sf.read(LDC / "LDC93S1.wav", dtype="int16")
    lines = ["wav_filename,wav_filesize,transcript"]
    for i, (seconds, size, text) in enumerate(CLIPS):
        sf.write(folder / f"c{i}.wav", samples[int(0.3 * rate): int((0.3 + seconds) * rate)], rate, subtype="PCM_16")
        lines.append(f"c{i}.wav,{size},{text}")
    (folder / "split.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_features(folder / "split.csv", folder / "features", shard_seconds=1.5)  # 3 shards: [c1 c3] [c0 c4] [c2]
    return folder


def frames(seconds):
    return 1 + (int(seconds * 16000) - 512) // 320


def test_batches_in_deepspeech_order_with_padding_and_labels(split):
    batches = list(dataset.load(split / "features", ALPHABET, 2, train=False))
    assert [len(b["wav_filename"]) for b in batches] == [2, 2, 1]  # dev/test keep the last partial batch
    names = [n.decode() for b in batches for n in b["wav_filename"].numpy()]
    assert names == [str(split / f"c{i}.wav") for i in ORDER]
    for b, rows in zip(batches, [ORDER[0:2], ORDER[2:4], ORDER[4:]]):
        lengths = [frames(CLIPS[i][0]) for i in rows]
        texts = [CLIPS[i][2] for i in rows]
        assert b["features"].dtype.name == "float32" and b["feature_lengths"].dtype.name == "int32"
        assert b["labels"].dtype.name == "int32" and b["label_lengths"].dtype.name == "int32"
        assert b["features"].shape == (len(rows), max(lengths), 26)
        assert b["feature_lengths"].numpy().tolist() == lengths
        assert b["labels"].shape == (len(rows), max(map(len, texts)))
        assert b["label_lengths"].numpy().tolist() == [len(t) for t in texts]
        for j, i in enumerate(rows):
            samples, rate = sf.read(split / f"c{i}.wav", dtype="int16")
            feats = b["features"].numpy()[j]
            np.testing.assert_array_equal(feats[: lengths[j]], mfcc(samples, rate))
            assert not feats[lengths[j]:].any()  # zero padding
            labels = b["labels"].numpy()[j]
            assert labels[: len(texts[j])].tolist() == ALPHABET.encode(texts[j])
            assert (labels[len(texts[j]):] == -1).all()
            assert ALPHABET.decode(labels[: len(texts[j])]) == texts[j]


def test_training_drops_the_last_partial_batch(split):
    batches = list(dataset.load(str(split / "features"), str(DATA / "alphabet.txt"), 2, train=True))
    assert [len(b["wav_filename"]) for b in batches] == [2, 2]
    assert batches[0]["features"].shape[0] == 2
    full = list(dataset.load(split / "features", ALPHABET, 5, train=True))
    assert len(full) == 1 and full[0]["features"].shape == (5, frames(2.0), 26)
    assert list(dataset.load(split / "features", ALPHABET, 6, train=True)) == []


def test_longest_batch(split):
    batch = dataset.longest_batch(split / "features", ALPHABET, 2)
    assert sorted(n.decode() for n in batch["wav_filename"].numpy()) == [str(split / "c2.wav"), str(split / "c3.wav")]
    assert sorted(batch["feature_lengths"].numpy().tolist()) == [frames(1.4), frames(2.0)]
    assert batch["features"].shape == (2, frames(2.0), 26)
    assert set(batch) == {"features", "feature_lengths", "labels", "label_lengths", "wav_filename"}
    whole = dataset.longest_batch(split / "features", ALPHABET, 10)  # more than there are: all of them
    assert len(whole["wav_filename"]) == 5


def test_info_is_the_index(split):
    index = dataset.info(split / "features")
    assert list(index.columns) == ["wav_filename", "wav_filesize", "transcript", "n_frames", "duration", "shard"]
    assert index.wav_filesize.tolist() == [100, 200, 300, 400, 500]
    assert index.n_frames.tolist() == [frames(CLIPS[i][0]) for i in ORDER]
    assert index.shard.tolist() == [f"shard-0000{i}.tfrecord" for i in (0, 0, 1, 1, 2)]


def test_alphabet_error_names_the_wav_and_characters(split):
    small = Alphabet([c for c in ALPHABET.labels if c not in "sy"])
    with pytest.raises(UserError, match=r"c1.wav: characters not in the alphabet: \['y', 's'\]; .*"
                                        r"c0.wav: characters not in the alphabet: \['s'\]"):
        dataset.load(split / "features", small, 2, train=True)
    with pytest.raises(UserError, match=r"c4.wav: characters not in the alphabet: \['y'\]"):
        dataset.longest_batch(split / "features", small, 2)


def test_missing_features_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="run `dsflow features`"):
        dataset.load(tmp_path, ALPHABET, 1, train=False)


def test_limit_and_reverse_pick_the_shortest_and_read_them_longest_first(tmp_path):
    """DeepSpeech's limit_*: the N shortest utterances; reverse_*: longest first (across shards too)."""
    from dsflow import features
    from tests.test_features import make_split

    csv = make_split(tmp_path / "data", [1, 2, 3, 4, 5])
    features.write_features(csv, tmp_path / "f", threads=1, shard_seconds=1.2)  # 3 shards: 2 + 2 + 1 clips
    alphabet = Alphabet(list(" clip01234"))

    def names(**kw):
        got = [n.decode().rsplit("/", 1)[1] for b in dataset.load(tmp_path / "f", alphabet, 2, False, **kw)
               for n in b["wav_filename"].numpy()]
        rows = list(dataset.rows(tmp_path / "f", kw.get("limit", 0), kw.get("reverse", False))["wav_filename"])
        assert got == [r.rsplit("/", 1)[1] for r in rows]  # what the index says a load yields
        return got

    assert names() == [f"clip{i}.wav" for i in range(5)]
    assert names(limit=3) == ["clip0.wav", "clip1.wav", "clip2.wav"]
    assert names(reverse=True) == [f"clip{i}.wav" for i in (4, 3, 2, 1, 0)]
    assert names(limit=4, reverse=True) == [f"clip{i}.wav" for i in (3, 2, 1, 0)]
    assert dataset.longest_batch(tmp_path / "f", alphabet, 1, limit=2)["wav_filename"].numpy()[0].endswith(b"clip1.wav")
