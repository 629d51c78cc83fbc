"""A features folder: DeepSpeech's MFCC features of one split, in TFRecord shards. This module owns its files,
writes them (for `dsflow features`) and reads them back as DeepSpeech's batches (for training and evaluation).

  shard-NNNNN.tfrecord  tf.train.Example records (features float32 bytes [T*26], n_frames, transcript,
                        wav_filename, duration) in DeepSpeech's order, about `shard_seconds` of audio a shard
  index.csv             wav_filename, wav_filesize, transcript, n_frames, duration, shard (one row a record)
  meta.json             sample_rate, win_len_ms, win_step_ms, n_input, count, total_seconds, csv (the validated
                        CSV), source (the split's own CSVs, for reports), sha256 (of all records: the folder's
                        content), dsflow_version

Reading follows DeepSpeech 0.9.3 (util/feeding.py `create_dataset`): no shuffling, every epoch in ascending
`wav_filesize` order (the order the shards are written in), features zero-padded to the longest item of the batch,
the last partial batch dropped when training and kept for dev/test. A batch is a dict:
  features        float32 [B, T, 26]  zero-padded to the longest in the batch
  feature_lengths int32   [B]
  labels          int32   [B, L]      alphabet indices of the transcript, padded with -1
  label_lengths   int32   [B]
  wav_filename    string  [B]
The writer needs neither TensorFlow nor pandas at import (the feature worker processes import this module).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import google_crc32c
import numpy as np

from dsflow import UserError, __version__, read_json
from dsflow.alphabet import Alphabet
from dsflow.log import SHOW, Progress, log
from dsflow.mfcc import N_INPUT

SHARD = "shard-{:05d}.tfrecord"
INDEX = "index.csv"
META = "meta.json"
LABEL_PAD = -1


# A tf.train.Example in protobuf's wire format (tensorflow/core/example/example.proto and feature.proto),
# written here so that the feature workers need no TensorFlow (2-4 s to import in each): Example{1: Features},
# Features{1: map<string, Feature>}, Feature{1: BytesList | 2: FloatList | 3: Int64List}, each list
# {1: packed values}. tests/test_features.py parses it with TensorFlow's parser.

def _varint(n: int) -> bytes:
    if n < 0x80:  # tags and most lengths: one byte
        return _BYTES[n]
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_BYTES = [bytes((i,)) for i in range(0x80)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a message, a string or a packed list."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def example(features: np.ndarray, transcript: str, wav_filename: str, duration: float) -> bytes:
    feature = {
        "features": _field(1, _field(1, features.astype("<f4").tobytes())),  # bytes_list
        "n_frames": _field(3, _field(1, _varint(len(features)))),  # int64_list
        "transcript": _field(1, _field(1, transcript.encode("utf-8"))),
        "wav_filename": _field(1, _field(1, wav_filename.encode("utf-8"))),
        "duration": _field(2, _field(1, struct.pack("<f", duration))),  # float_list
    }
    return _field(1, b"".join(_field(1, _field(1, key.encode()) + _field(2, value)) for key, value in feature.items()))


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF)


def record(data: bytes) -> bytes:
    """`data` framed as one TFRecord record: length, masked CRC-32C of the length, data, masked CRC-32C of the data."""
    length = struct.pack("<Q", len(data))
    return length + _masked_crc(length) + data + _masked_crc(data)


def write(folder: Path, rows, batches, meta: dict, shard_seconds: float = 3600.0):
    """Write a features folder into `folder` (the caller makes it appear atomically): `batches` yields
    (framed records as one bytes object, [(n_frames, duration, record length), ...]) for `rows` (a DataFrame with
    wav_filename, wav_filesize, transcript) in their order; `meta` goes into meta.json with the counts. Returns the
    index."""
    import pandas as pd

    n_frames, durations, shards = [], [], []
    shard, file, shard_duration = -1, None, 0.0
    digest = hashlib.sha256()  # of every record, in order: the folder's content in one value (meta.json)
    try:
        with Progress("features", len(rows), "clips") as progress:
            for data, sizes in batches:
                offset = 0
                for frames, duration, size in sizes:
                    if file is None or shard_duration >= shard_seconds:
                        if file is not None:
                            file.close()
                        shard, shard_duration = shard + 1, 0.0
                        file = open(folder / SHARD.format(shard), "wb")
                    file.write(memoryview(data)[offset:offset + size])
                    digest.update(memoryview(data)[offset:offset + size])
                    offset += size
                    shard_duration += duration
                    n_frames.append(frames)
                    durations.append(duration)
                    shards.append(SHARD.format(shard))
                progress.update(len(sizes))
    finally:
        if file is not None:
            file.close()
    index = pd.DataFrame({"wav_filename": rows["wav_filename"], "wav_filesize": rows["wav_filesize"],
                          "transcript": rows["transcript"], "n_frames": n_frames, "duration": durations,
                          "shard": shards})
    index.to_csv(folder / INDEX, index=False, encoding="utf-8")
    (folder / META).write_text(json.dumps({
        **meta, "n_input": N_INPUT, "count": len(index), "total_seconds": float(index["duration"].sum()),
        "sha256": digest.hexdigest(), "dsflow_version": __version__}, indent=2) + "\n", encoding="utf-8")
    log.info("%d clips, %.2f h of audio, %d shards", len(index), index["duration"].sum() / 3600, shard + 1,
             extra=SHOW)
    return index


# ---------------------------------------------------------------------------------------------- reading

def info(features_dir: str | Path):
    """The split's index, in DeepSpeech order: wav_filename, wav_filesize, transcript, n_frames, duration, shard."""
    import pandas as pd

    path = Path(features_dir) / INDEX
    try:
        return pd.read_csv(path, dtype={"wav_filename": str, "transcript": str, "shard": str},
                           keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no feature index; run `dsflow features` for this split first") from None


def source(features_dir: str | Path) -> str:
    """The data a features folder was made from, as the user named it (the CSVs or Common Voice TSV of its split,
    meta.json's `source`), else the folder itself."""
    return ",".join(meta(features_dir).get("source") or []) or str(features_dir)


def meta(features_dir: str | Path) -> dict:
    path = Path(features_dir) / META
    return read_json(path, f"{path}: no feature metadata; run `dsflow features` for this split first")


def _alphabet(alphabet: Alphabet | str | Path) -> Alphabet:
    return alphabet if isinstance(alphabet, Alphabet) else Alphabet.from_file(alphabet)


def _check_alphabet(index, alphabet: Alphabet, features_dir) -> None:
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

    if alphabet.bytes_output_mode:  # UTF8Alphabet.Encode: byte b -> label b - 1
        def encode(transcript):
            return tf.cast(tf.io.decode_raw(transcript, tf.uint8), tf.int32) - 1
    else:  # DeepSpeech's Alphabet.Encode looks up each codepoint of the transcript.
        codes = {ord(label): i for i, label in enumerate(alphabet.labels) if len(label) == 1}
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(list(codes), tf.int32),
                                                tf.constant(list(codes.values()), tf.int32)),
            default_value=LABEL_PAD)

        def encode(transcript):
            return table.lookup(tf.strings.unicode_decode(transcript, "UTF-8"))
    spec = {
        "features": tf.io.FixedLenFeature([], tf.string),
        "n_frames": tf.io.FixedLenFeature([], tf.int64),
        "transcript": tf.io.FixedLenFeature([], tf.string),
        "wav_filename": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        features = tf.reshape(tf.io.decode_raw(ex["features"], tf.float32, little_endian=True), [-1, N_INPUT])
        labels = encode(ex["transcript"])
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


def rows(features_dir: str | Path, limit: int = 0, reverse: bool = False):
    """The index rows a `load` with these settings yields, in its order (DeepSpeech's limit_* keeps the `limit`
    shortest utterances, 0: all; reverse_* reads them longest first)."""
    index = info(features_dir)
    index = index.head(limit) if limit else index
    return index.iloc[::-1] if reverse else index


def load(features_dir: str | Path, alphabet: Alphabet | str | Path, batch_size: int, train: bool, limit: int = 0,
         reverse: bool = False):
    """The split as a tf.data.Dataset of batches in DeepSpeech order (see the module docstring), of its `limit`
    shortest utterances (0: all), longest first with `reverse` (DeepSpeech's limit_*/reverse_* flags)."""
    import tensorflow as tf

    features_dir, index, alphabet = _prepare(features_dir, alphabet)
    index = rows(features_dir, limit)
    counts = index.groupby("shard", sort=False).size()  # records per shard, in index order
    if reverse:  # a shard at a time into memory (an hour of audio's features: ~20 MB), its records reversed
        shards = tf.constant([str(features_dir / s) for s in counts.index[::-1]])
        ds = tf.data.Dataset.from_tensor_slices((shards, tf.constant(counts.values[::-1], tf.int64))).flat_map(
            lambda f, n: tf.data.TFRecordDataset(f).take(n).batch(1 << 30).map(lambda r: tf.reverse(r, [0])).unbatch())
    else:
        ds = tf.data.TFRecordDataset([str(features_dir / s) for s in counts.index])  # one after another: order kept
        ds = ds.take(len(index)) if limit else ds
    ds = ds.map(_parse(alphabet), num_parallel_calls=2, deterministic=True)
    # Fixed parallelism, autotune off: with it on, deleting an epoch's finished iterator stalled for 15-30 s
    # in about one epoch of three while training (measured; the parse is cheap and never the bottleneck).
    options = tf.data.Options()
    options.autotune.enabled = False
    return _padded_batch(ds, batch_size, drop_remainder=train).prefetch(2).with_options(options)


def longest_batch(features_dir: str | Path, alphabet: Alphabet | str | Path, batch_size: int, limit: int = 0) -> dict:
    """One batch of the `batch_size` longest utterances (most frames; fewer if the split is smaller) among the
    `limit` shortest (0: all), for a first step that hits out-of-memory before the first epoch rather than at its
    end."""
    import tensorflow as tf

    features_dir, index, alphabet = _prepare(features_dir, alphabet)
    index = rows(features_dir, limit)
    index = index.assign(position=index.groupby("shard", sort=False).cumcount())
    longest = index.sort_values("n_frames", ascending=False, kind="stable").head(batch_size)
    parts = []
    for shard, group in longest.groupby("shard"):  # shard names sort in index order
        wanted = tf.constant(sorted(group["position"]), tf.int64)
        parts.append(tf.data.TFRecordDataset(str(features_dir / shard)).enumerate()
                     .filter(lambda i, _, w=wanted: tf.reduce_any(tf.equal(i, w)))
                     .map(lambda _, record: record))
    ds = parts[0]
    for part in parts[1:]:
        ds = ds.concatenate(part)
    ds = _padded_batch(ds.map(_parse(alphabet)), batch_size, drop_remainder=False)
    return next(iter(ds))
