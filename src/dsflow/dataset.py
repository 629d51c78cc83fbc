"""Reading a split's feature shards (written by `dsflow features`) as DeepSpeech's batches.

DeepSpeech 0.9.3 (util/feeding.py `create_dataset`): no shuffling, every epoch in ascending
`wav_filesize` order (the order the shards are written in), features zero-padded to the longest
item of the batch, the last partial batch dropped when training and kept for dev/test.

A batch is a dict:
  features        float32 [B, T, 26]  zero-padded to the longest in the batch
  feature_lengths int32   [B]
  labels          int32   [B, L]      alphabet indices of the transcript, padded with -1
  label_lengths   int32   [B]
  wav_filename    string  [B]
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dsflow import UserError
from dsflow.alphabet import Alphabet

N_INPUT = 26
INDEX = "index.csv"
META = "meta.json"
LABEL_PAD = -1


def info(features_dir: str | Path) -> pd.DataFrame:
    """The split's index, in DeepSpeech order: wav_filename, wav_filesize, transcript, n_frames, duration, shard."""
    path = Path(features_dir) / INDEX
    try:
        return pd.read_csv(path, dtype={"wav_filename": str, "transcript": str, "shard": str},
                           keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no feature index; run `dsflow features` for this split first") from None


def meta(features_dir: str | Path) -> dict:
    path = Path(features_dir) / META
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no feature metadata; run `dsflow features` for this split first") from None


def _alphabet(alphabet: Alphabet | str | Path) -> Alphabet:
    return alphabet if isinstance(alphabet, Alphabet) else Alphabet.from_file(alphabet)


def _check_alphabet(index: pd.DataFrame, alphabet: Alphabet, features_dir) -> None:
    """DeepSpeech refuses transcripts with characters outside the alphabet; so do we, up front, naming them."""
    bad = []
    for wav, text in zip(index["wav_filename"], index["transcript"]):
        missing = alphabet.missing(text)
        if missing or not text:
            bad.append(f"{wav}: {'empty transcript' if not text else f'characters not in the alphabet: {missing}'}")
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise UserError(f"{features_dir}: {len(bad)} transcripts cannot be encoded with {alphabet.source}: "
                        + "; ".join(bad[:5]) + more)


def _parse(alphabet: Alphabet):
    """A tf.data map function: serialized Example -> one unbatched item of the dict above."""
    import tensorflow as tf

    # DeepSpeech's Alphabet.Encode looks up each codepoint of the transcript.
    codes = {ord(label): i for i, label in enumerate(alphabet.labels) if len(label) == 1}
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(codes), tf.int32),
                                            tf.constant(list(codes.values()), tf.int32)),
        default_value=LABEL_PAD)
    spec = {
        "features": tf.io.FixedLenFeature([], tf.string),
        "n_frames": tf.io.FixedLenFeature([], tf.int64),
        "transcript": tf.io.FixedLenFeature([], tf.string),
        "wav_filename": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        features = tf.reshape(tf.io.decode_raw(ex["features"], tf.float32, little_endian=True), [-1, N_INPUT])
        labels = table.lookup(tf.strings.unicode_decode(ex["transcript"], "UTF-8"))
        return {
            "features": features,
            "feature_lengths": tf.cast(ex["n_frames"], tf.int32),
            "labels": labels,
            "label_lengths": tf.size(labels, out_type=tf.int32),
            "wav_filename": ex["wav_filename"],
        }

    return parse


def _padded_batch(ds, batch_size: int, drop_remainder: bool):
    return ds.padded_batch(
        batch_size,
        padded_shapes={"features": [None, N_INPUT], "feature_lengths": [], "labels": [None],
                       "label_lengths": [], "wav_filename": []},
        padding_values={"features": 0.0, "feature_lengths": 0, "labels": LABEL_PAD, "label_lengths": 0,
                        "wav_filename": ""},
        drop_remainder=drop_remainder)


def _prepare(features_dir, alphabet):
    features_dir = Path(features_dir)
    m = meta(features_dir)
    if m.get("n_input") != N_INPUT:
        raise UserError(f"{features_dir / META}: n_input is {m.get('n_input')}, expected {N_INPUT}")
    index = info(features_dir)
    alphabet = _alphabet(alphabet)
    if index.empty:
        raise UserError(f"{features_dir / INDEX}: no utterances")
    _check_alphabet(index, alphabet, features_dir)
    return features_dir, index, alphabet


def load(features_dir: str | Path, alphabet: Alphabet | str | Path, batch_size: int, train: bool):
    """The split as a tf.data.Dataset of batches in DeepSpeech order (see the module docstring)."""
    import tensorflow as tf

    features_dir, index, alphabet = _prepare(features_dir, alphabet)
    shards = [str(features_dir / s) for s in dict.fromkeys(index["shard"])]  # index order, each once
    ds = tf.data.TFRecordDataset(shards)  # files read one after another: order kept
    ds = ds.map(_parse(alphabet), num_parallel_calls=2, deterministic=True)
    # Fixed parallelism, autotune off: with it on, deleting an epoch's finished iterator stalled for 15-30 s
    # in about one epoch of three while training (measured; the parse is cheap and never the bottleneck).
    options = tf.data.Options()
    options.autotune.enabled = False
    return _padded_batch(ds, batch_size, drop_remainder=train).prefetch(2).with_options(options)


def longest_batch(features_dir: str | Path, alphabet: Alphabet | str | Path, batch_size: int) -> dict:
    """One batch of the `batch_size` longest utterances (most frames; fewer if the split is smaller),
    for a first step that hits out-of-memory before the first epoch rather than at its end."""
    import tensorflow as tf

    features_dir, index, alphabet = _prepare(features_dir, alphabet)
    index = index.assign(position=index.groupby("shard", sort=False).cumcount())
    longest = index.sort_values("n_frames", ascending=False, kind="stable").head(batch_size)
    parts = []
    for shard, rows in longest.groupby("shard"):  # shard names sort in index order
        wanted = tf.constant(sorted(rows["position"]), tf.int64)
        parts.append(tf.data.TFRecordDataset(str(features_dir / shard)).enumerate()
                     .filter(lambda i, _, w=wanted: tf.reduce_any(tf.equal(i, w)))
                     .map(lambda _, record: record))
    ds = parts[0]
    for part in parts[1:]:
        ds = ds.concatenate(part)
    ds = _padded_batch(ds.map(_parse(alphabet)), batch_size, drop_remainder=False)
    return next(iter(ds))
