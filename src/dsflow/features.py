"""DeepSpeech 0.9.3's acoustic features, computed exactly, and `dsflow features` (one split -> TFRecord shards).

DeepSpeech (util/feeding.py `audio_to_features`) runs TensorFlow's `AudioSpectrogram` (periodic Hann
window, FFT length = next power of two, magnitude squared) and `Mfcc` (40 mel channels between
20 Hz and rate/2, log floored at 1e-12, DCT-II scaled by sqrt(2/40), 26 coefficients) on
int16/32767 audio. `mfcc` below is the same arithmetic as those kernels
(tensorflow/core/kernels/spectrogram.cc, mfcc_mel_filterbank.cc, mfcc_dct.cc) written as a few
vectorized numpy operations (and one FFTW real FFT) over blocks of frames, in float64 like the kernels,
with the spectrogram rounded to float32 between the two ops like the graph does. On real audio the
result is bit-identical to the ops but for a rare 1-ulp difference (tests/test_features.py checks it
with a 1-2 float32-step tolerance).

`dsflow features` computes a split's clips in worker processes, which also build the TFRecord records
(tf.train.Example, framed with CRC-32C) without importing TensorFlow; the main process writes them, in
DeepSpeech's order, into shards.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import multiprocessing
import os
import struct
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np
import pyfftw
from threadpoolctl import threadpool_limits

from dsflow import UserError, __version__
from dsflow.atomic import atomic_dir
from dsflow.audio import read_pcm16
from dsflow.log import Progress, log

N_INPUT = 26  # DeepSpeech's util/config.py n_input
FILTERBANK_CHANNELS = 40  # Mfcc op default
LOWER_FREQUENCY_LIMIT = 20.0  # Mfcc op default
FILTERBANK_FLOOR = 1e-12  # mfcc.cc kFilterbankFloor
BLOCK = 128  # frames per block in `mfcc` (bench: 64 is 5% slower; 256 no faster)
INT16_MAX = np.float32(np.iinfo(np.int16).max)
BATCH = 32  # clips per task of the feature worker processes (bench: 16 is about 5% slower)


@functools.lru_cache(maxsize=16)
def window_samples(sample_rate: int, win_len_ms: float, win_step_ms: float) -> tuple[int, int]:
    """(window, stride) in samples; DeepSpeech exits unless both are whole numbers of samples."""
    out = []
    for name, ms in (("window length", win_len_ms), ("window step", win_step_ms)):
        n = ms * sample_rate / 1000
        if n != int(n) or n <= 0:
            raise ValueError(f"feature {name} of {ms} ms at {sample_rate} Hz is {n} samples, "
                             "not a positive whole number")
        out.append(int(n))
    return out[0], out[1]


def _freq_to_mel(freq):
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def _tables(window: int, sample_rate: int, upper_frequency_limit: float):
    """Hann window, mel weight matrix [bins, 40] and DCT matrix [40, 26], as the TF kernels build them."""
    fft_length = 1 << (window - 1).bit_length()
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)  # periodic Hann
    bins = fft_length // 2 + 1

    # mfcc_mel_filterbank.cc MfccMelFilterbank::Initialize
    channels = FILTERBANK_CHANNELS
    mel_low = _freq_to_mel(LOWER_FREQUENCY_LIMIT)
    mel_hi = _freq_to_mel(upper_frequency_limit)
    spacing = (mel_hi - mel_low) / (channels + 1)
    centers = mel_low + spacing * np.arange(1, channels + 2)
    hz_per_sbin = 0.5 * sample_rate / (bins - 1)
    start = int(1.5 + LOWER_FREQUENCY_LIMIT / hz_per_sbin)
    end = int(upper_frequency_limit / hz_per_sbin)
    matrix = np.zeros((bins, channels))
    channel = 0
    for i in range(start, min(end, bins - 1) + 1):
        melf = float(_freq_to_mel(i * hz_per_sbin))
        while channel < channels and centers[channel] < melf:
            channel += 1
        band = channel - 1
        if band >= 0:
            weight = (centers[band + 1] - melf) / (centers[band + 1] - centers[band])
            matrix[i, band] += weight  # right side of the triangle
        else:
            weight = (centers[0] - melf) / (centers[0] - mel_low)
        if band + 1 < channels:
            matrix[i, band + 1] += 1.0 - weight  # left side of the next triangle

    # mfcc_dct.cc: cosines[i][j] = sqrt(2/N) cos(pi/N * i * (j + 0.5))
    j = np.arange(channels) + 0.5
    dct = math.sqrt(2.0 / channels) * np.cos(np.pi / channels * np.outer(j, np.arange(N_INPUT)))
    return hann, fft_length, matrix, dct


def mfcc(samples: np.ndarray, sample_rate: int, win_len_ms: float = 32, win_step_ms: float = 20) -> np.ndarray:
    """DeepSpeech's features of int16 mono `samples`: float32 [T, 26], T = 1 + (N - window) // stride.

    Frames are processed in blocks that stay in the CPU cache. The small matrix products go
    through BLAS: callers that run this on several threads should limit BLAS to one thread
    (`write_features` does), as OpenBLAS's own threads otherwise fight with theirs and TF's.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"mono audio expected, got shape {samples.shape}")
    window, stride = window_samples(sample_rate, win_len_ms, win_step_ms)
    hann, fft_length, melmatrix, dct = _tables(window, sample_rate, sample_rate / 2)
    audio = samples.astype(np.float32) / INT16_MAX  # pcm_to_np: /32767 in float32
    if len(audio) < window:
        return np.zeros((0, N_INPUT), np.float32)
    # the overlapping frames as a view of `audio`: sliding_window_view(audio, window)[::stride] in 1 us, not 40
    frames = np.ndarray((1 + (len(audio) - window) // stride, window), audio.dtype, audio, 0,
                        (stride * audio.itemsize, audio.itemsize))
    out = np.empty((len(frames), N_INPUT), np.float32)
    work = _work(fft_length)
    for i in range(0, len(frames), BLOCK):
        chunk = frames[i:i + BLOCK]
        n = len(chunk)
        np.multiply(chunk, hann, out=work.windowed[:n, :window])  # zero-padded to the FFT length, like the kernel
        work.rfft(n)  # float64 like the kernel
        parts = work.spectrum[:n].view(np.float64)  # [re, im, re, im, ...]
        np.multiply(parts, parts, out=parts)
        power = work.power[:n]  # summed in float64, stored as AudioSpectrogram's float32 output
        np.add(parts[:, 0::2], parts[:, 1::2], out=power, casting="same_kind")
        magnitude = np.sqrt(power, out=work.magnitude[:n], dtype=np.float64)  # the Mfcc op's sqrt, in float64
        mel = magnitude @ melmatrix
        np.maximum(mel, FILTERBANK_FLOOR, out=mel)
        np.log(mel, out=mel)
        out[i:i + BLOCK] = mel @ dct
    return out


class _Work:
    """One thread's work arrays for `mfcc` blocks, and FFTW plans on them (one per block height, made on first use).

    Kept per thread and reused: allocating them per call costs page faults in a fresh process (1.4x slower in
    the feature worker processes), and an FFTW plan is bound to its arrays. FFTW's real FFT measured 1.4x
    faster than numpy's (pocketfft) on blocks of 512-point frames; both are float64, like the kernel's.
    """

    def __init__(self, fft_length: int):
        self.fft_length, self._plans = fft_length, {}
        bins = fft_length // 2 + 1
        self.windowed = pyfftw.zeros_aligned((BLOCK, fft_length))  # the zero padding beyond the window stays 0
        self.spectrum = pyfftw.empty_aligned((BLOCK, bins), np.complex128)
        self.power = np.empty((BLOCK, bins), np.float32)
        self.magnitude = np.empty((BLOCK, bins))

    def rfft(self, n: int) -> None:
        """spectrum[:n] = rfft(windowed[:n]) along the rows."""
        plan = self._plans.get(n)
        if plan is None:  # FFTW_ESTIMATE: planning does not write to the arrays and takes microseconds
            plan = self._plans[n] = pyfftw.FFTW(self.windowed[:n], self.spectrum[:n], axes=(1,),
                                                flags=("FFTW_ESTIMATE",), threads=1)
        plan.execute()


_local = threading.local()


def _work(fft_length: int) -> _Work:
    work = getattr(_local, "work", None)
    if work is None or work.fft_length != fft_length:
        work = _local.work = _Work(fft_length)
    return work


def mfcc_tf(samples: np.ndarray, sample_rate: int, win_len_ms: float = 32, win_step_ms: float = 20) -> np.ndarray:
    """The same features through DeepSpeech's own TF ops (the reference; used by tests and the bench)."""
    import tensorflow as tf

    window, stride = window_samples(sample_rate, win_len_ms, win_step_ms)
    audio = tf.constant(np.asarray(samples, np.float32)[:, None] / np.float32(np.iinfo(np.int16).max))
    spectrogram = tf.raw_ops.AudioSpectrogram(input=audio, window_size=window, stride=stride,
                                              magnitude_squared=True)
    out = tf.raw_ops.Mfcc(spectrogram=spectrogram, sample_rate=sample_rate, dct_coefficient_count=N_INPUT,
                          upper_frequency_limit=sample_rate / 2)
    return tf.reshape(out, [-1, N_INPUT]).numpy()


# ---------------------------------------------------------------------------------------------
# `dsflow features`: one validated split -> DIR/shard-NNNNN.tfrecord + DIR/index.csv + DIR/meta.json


def read_csv(csv_path: str | Path) -> pd.DataFrame:
    """A DeepSpeech CSV in DeepSpeech's order (dsflow.csvfile), `wav_filename` resolved against the CSV's folder."""
    from dsflow import csvfile  # here, not at the top: the feature worker processes start without pandas

    frame = csvfile.deepspeech_order(csvfile.read(csv_path), csv_path)
    return frame.assign(wav_filename=frame["path"])[["wav_filename", "wav_filesize", "transcript", "row"]]


def _clip_features(path: str, row: int, csv_path, sample_rate: int, win_len: float, win_step: float):
    """Read one validated WAV and compute its features."""
    where = f"{csv_path}: row {row}: {path}"
    if not os.path.isfile(path):
        raise UserError(f"{where}: no such file")
    samples = read_pcm16(path, where, sample_rate)
    return mfcc(samples, sample_rate, win_len, win_step), len(samples) / sample_rate


# A tf.train.Example in protobuf's wire format (tensorflow/core/example/example.proto and feature.proto),
# written here so that the workers need no TensorFlow (2-4 s to import in each): Example{1: Features},
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


def _example(features: np.ndarray, transcript: str, wav_filename: str, duration: float) -> bytes:
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


def _record(data: bytes) -> bytes:
    """`data` framed as one TFRecord record: length, masked CRC-32C of the length, data, masked CRC-32C of the data."""
    length = struct.pack("<Q", len(data))
    return length + _masked_crc(length) + data + _masked_crc(data)


def _batch_records(jobs, csv_path, sample_rate: int, win_len: float, win_step: float):
    """One task of the worker processes: the TFRecord records of a batch of (path, row, transcript) jobs, as
    one bytes object (one copy through the pipe), and each clip's (n_frames, duration, record length)."""
    records, sizes = [], []
    for path, row, transcript in jobs:
        features, duration = _clip_features(path, row, csv_path, sample_rate, win_len, win_step)
        records.append(_record(_example(features, transcript, path, duration)))
        sizes.append((len(features), duration, len(records[-1])))
    return b"".join(records), sizes


def _one_blas_thread() -> None:
    threadpool_limits(1, user_api="blas")  # parallel over clips already: BLAS threads would only contend


def batch_records(rows, csv_path, sample_rate: int, win_len: float, win_step: float, threads: int):
    """`_batch_records` of the rows in batches of BATCH, in row order, computed by `threads` worker processes.

    Processes, not threads: two threads measured only 1.1-1.3x one (the numpy calls per block are small and
    hand the GIL back and forth). No more workers than the CPUs this process may run on (Snakemake's
    `--cores 8` on a 2-CPU machine gives 2). A bounded number of batches is in flight (memory stays flat on
    big splits). The workers also build the records, so that this process only writes bytes: building
    them here cost the job 15-20% on 2 CPUs. With one worker everything runs in this process.
    """
    jobs = zip(rows["wav_filename"], rows["row"], rows["transcript"])
    batches = iter(lambda: list(itertools.islice(jobs, BATCH)), [])
    args = (csv_path, sample_rate, win_len, win_step)
    workers = min(threads, len(os.sched_getaffinity(0)))
    if workers <= 1:
        with threadpool_limits(1, user_api="blas"):
            for batch in batches:
                yield _batch_records(batch, *args)
        return
    # forkserver: workers start from a clean interpreter, not a fork of this one (which may run TF's threads)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # the workers fork from a server that imported this module once
    with ProcessPoolExecutor(workers, context, _one_blas_thread) as pool:
        pending = deque(pool.submit(_batch_records, batch, *args) for batch in itertools.islice(batches, 4 * workers))
        try:
            while pending:
                result = pending.popleft().result()
                for batch in itertools.islice(batches, 1):
                    pending.append(pool.submit(_batch_records, batch, *args))
                yield result
        finally:
            for future in pending:
                future.cancel()


def write_features(csv_path, out_dir, sample_rate: int = 16000, win_len: float = 32, win_step: float = 20,
                   threads: int = 1, shard_seconds: float = 3600.0) -> pd.DataFrame:
    """Compute a split's features into TFRecord shards in DeepSpeech order; returns the index.

    Built in a temporary sibling folder and moved onto `out_dir` only when complete.
    """
    try:
        window_samples(sample_rate, win_len, win_step)
    except ValueError as e:
        raise UserError(str(e)) from None
    if shard_seconds <= 0:
        raise UserError(f"--shard-seconds must be positive, got {shard_seconds}")
    rows = read_csv(csv_path)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        index = _write_shards(rows, csv_path, tmp, sample_rate, win_len, win_step, threads, shard_seconds)
        (tmp / "meta.json").write_text(json.dumps({
            "sample_rate": sample_rate, "win_len_ms": win_len, "win_step_ms": win_step, "n_input": N_INPUT,
            "count": len(index), "total_seconds": float(index["duration"].sum()),
            "csv": str(Path(csv_path).resolve()), "dsflow_version": __version__,
        }, indent=2) + "\n", encoding="utf-8")
    return index


def _write_shards(rows, csv_path, tmp: Path, sample_rate, win_len, win_step, threads, shard_seconds):
    n_frames, durations, shards = [], [], []
    shard, file, shard_duration = -1, None, 0.0
    try:
        with Progress("features", len(rows), "clips") as progress:
            for data, sizes in batch_records(rows, csv_path, sample_rate, win_len, win_step, threads):
                offset = 0
                for frames, duration, size in sizes:
                    if file is None or shard_duration >= shard_seconds:
                        if file is not None:
                            file.close()
                        shard, shard_duration = shard + 1, 0.0
                        file = open(tmp / SHARD.format(shard), "wb")
                    file.write(memoryview(data)[offset:offset + size])
                    offset += size
                    shard_duration += duration
                    n_frames.append(frames)
                    durations.append(duration)
                    shards.append(SHARD.format(shard))
                progress.update(len(sizes))
    finally:
        if file is not None:
            file.close()
    import pandas as pd

    index = pd.DataFrame({"wav_filename": rows["wav_filename"], "wav_filesize": rows["wav_filesize"],
                          "transcript": rows["transcript"], "n_frames": n_frames, "duration": durations,
                          "shard": shards})
    index.to_csv(tmp / "index.csv", index=False, encoding="utf-8")
    if index.empty:
        log.warning("%s: no clips; the features folder is empty", csv_path)
    log.info("%d clips, %.2f h of audio, %d shards", len(index), index["duration"].sum() / 3600, shard + 1)
    return index


SHARD = "shard-{:05d}.tfrecord"


def add_parser(sub) -> None:
    p = sub.add_parser("features", help="compute DeepSpeech's MFCC features of a validated split into "
                                        "TFRecord shards, in DeepSpeech's order (wav_filesize ascending)")
    p.add_argument("--csv", required=True, help="validated DeepSpeech CSV (wav_filename,wav_filesize,transcript)")
    p.add_argument("--out-dir", required=True, help="output folder (shards, index.csv, meta.json); replaced atomically")
    p.add_argument("--sample-rate", type=int, default=16000, help="audio_sample_rate (default 16000)")
    p.add_argument("--win-len", type=float, default=32, help="feature_win_len in ms (default 32)")
    p.add_argument("--win-step", type=float, default=20, help="feature_win_step in ms (default 20)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="worker processes (default: all CPUs)")
    p.add_argument("--shard-seconds", type=float, default=3600.0,
                   help="audio seconds per shard (default 3600: one shard per hour of audio)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    write_features(args.csv, args.out_dir, args.sample_rate, args.win_len, args.win_step,
                   max(1, args.threads), args.shard_seconds)
    return 0
