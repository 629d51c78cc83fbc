"""`dsflow features`: one validated split -> a features folder (dsflow.dataset) of DeepSpeech's exact MFCCs.

The clips are read and computed (dsflow.mfcc) in worker processes, which also build the TFRecord records
(dsflow.dataset.record, without TensorFlow); the main process writes them, in DeepSpeech's order, into shards.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from threadpoolctl import threadpool_limits

from dsflow import UserError, dataset, flags
from dsflow.atomic import atomic_dir
from dsflow.audio import read_pcm16
from dsflow.mfcc import mfcc, window_samples

BATCH = 32  # clips per task of the feature worker processes (bench: 16 is about 5% slower)


def read_csv(csv_path: str | Path):
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


def _batch_records(jobs, csv_path, sample_rate: int, win_len: float, win_step: float):
    """One task of the worker processes: the TFRecord records of a batch of (path, row, transcript) jobs, as
    one bytes object (one copy through the pipe), and each clip's (n_frames, duration, record length)."""
    records, sizes = [], []
    for path, row, transcript in jobs:
        features, duration = _clip_features(path, row, csv_path, sample_rate, win_len, win_step)
        records.append(dataset.record(dataset.example(features, transcript, path, duration)))
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
                   threads: int = 1, shard_seconds: float = 3600.0, source: list[str] = ()):
    """Compute a split's features into a features folder in DeepSpeech order; returns the index.

    Built in a temporary sibling folder and moved onto `out_dir` only when complete.
    """
    try:
        window_samples(sample_rate, win_len, win_step)
    except ValueError as e:
        raise UserError(str(e)) from None
    if shard_seconds <= 0:
        raise UserError(f"--shard_seconds must be positive, got {shard_seconds}")
    rows = read_csv(csv_path)
    meta = {"sample_rate": sample_rate, "win_len_ms": win_len, "win_step_ms": win_step,
            "csv": str(Path(csv_path).resolve()), "source": list(source)}
    with atomic_dir(out_dir) as tmp:
        batches = batch_records(rows, csv_path, sample_rate, win_len, win_step, threads)
        index = dataset.write(tmp, rows, batches, meta, shard_seconds)
    if index.empty:
        from dsflow.log import log

        log.warning("%s: no clips; the features folder is empty", csv_path)
    return index


def add_parser(sub) -> None:
    p = sub.add_parser("features", help="compute DeepSpeech's MFCC features of a validated split into "
                                        "TFRecord shards, in DeepSpeech's order (wav_filesize ascending)")
    p.add_argument("--csv", required=True, help="validated DeepSpeech CSV (wav_filename,wav_filesize,transcript)")
    p.add_argument("--out_dir", required=True, help="output folder (shards, index.csv, meta.json); replaced atomically")
    flags.add_options(p, "features")
    p.add_argument("--source", default="", help="comma-separated: the data the CSV was validated from (reports name it)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="worker processes (default: all CPUs)")
    p.add_argument("--shard_seconds", type=float, default=3600.0,
                   help="audio seconds per shard (default 3600: one shard per hour of audio)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    flags.check(args, "features")
    write_features(args.csv, args.out_dir, args.audio_sample_rate, args.feature_win_len, args.feature_win_step,
                   max(1, args.threads), args.shard_seconds, flags.file_list(args.source))
    return 0
