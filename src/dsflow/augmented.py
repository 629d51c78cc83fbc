"""Augmented training batches: a training split's clips with fresh augmentations every epoch (dsflow.augment),
computed in worker processes ahead of the trainer, batched exactly like dsflow.dataset's batches.

Design
- Source of truth is the split's features folder (dsflow.dataset): its index.csv lists the validated audio files
  (absolute `wav_filename`) and transcripts in DeepSpeech's order, its meta.json the rate and windows. So an
  epoch has the same clips, order and batches as `dataset.load(..., train=True)` (the last partial batch dropped),
  and with no augmentation the batches are equal to it value for value (tests/test_augment.py).
- Clip `i` of epoch `e` is augmented with random numbers seeded by (random_seed, e, i, spec position) and the
  training clock (e * N + i) / (epochs * N) that DeepSpeech's value ranges `a:b` follow. Batch `k` of epoch `e` is
  therefore the same whenever it is computed: a resumed epoch (`start` = the saved step) repeats exactly the
  examples it would have had, and a run is reproducible.
- Where the work happens: sample-domain augmentations on the float audio (int16 / 32767, DeepSpeech's pcm_to_np),
  signal ones on the same, spectrogram ones on dsflow.mfcc.spectrogram, then dsflow.mfcc.mfcc_of_spectrogram
  (bit-identical to the features job's mfcc), feature ones on the MFCCs; which augmentations apply to a clip (p) is
  decided first, so a clip none applies to costs only its reading and features. `workers` processes (forkserver,
  one BLAS thread) each compute whole batches' clips (read, augment, features); at most `ahead` batches are in
  flight or waiting (bounded memory). The trainer's process pads them, adds the labels and converts to tensors
  (about 1 CPU-ms a batch). `waited` says how long the consumer waited for the workers in the current epoch.
- Regrouping (not in DeepSpeech): `tempo` (and `codec`'s last frame) change a clip's length, and a batch is padded
  to its longest clip, so one slowed clip among 16 short ones made the whole batch longer: with TRAINING.rst's
  example set the trainer computed 1.14-1.39x the frames of an epoch without augmentation, for 1.01-1.04x the audio
  (bench/bench_augment.py; 1.08-1.09x regrouped).
  So the clips of `regroup` consecutive batches (a window) are sorted by their augmented length (stable) and cut
  into batches again. Without a length change a window keeps DeepSpeech's batches exactly; the clips stay in their
  window (the order stays shortest first, within a window), and batch k of an epoch is still the same however it
  is reached.
- Cost (bench/bench_augment.py, 2-core AMD EPYC shared with other jobs): reading + features 0.12 CPU-ms per audio
  second; DeepSpeech's TRAINING.rst example set (13 augmentations, mostly p=0.1) 1.4-1.9, about 80% of it the Opus
  encoder of `codec`; the demo's pitch set 0.2. DeepSpeech's model (n_hidden 2048, batch 16) spends ~100 CPU-ms per
  audio second, so beside it even the example set costs little: 0.88 of the cached features' speed (regrouped; 0.79
  without). The demo's model (n_hidden 256) spends only 3-3.5 and keeps 1.7 of 2 cores busy, so there the ratio is
  about trainer / (trainer + workers): 0.61 with the example set, 0.93 with the demo's pitch set.
- Only feature-domain augmentations (add/multiply by default, or dropout/time_mask with domain=features): the
  audio is not read at all; the cached features are streamed with dataset.load and each clip's valid frames are
  augmented in the trainer's process (microseconds a clip). The result equals the full pipeline's, since the
  cached features are the same MFCCs; no worker processes are started.
- Without augmentation the trainer keeps using dataset.load (this module is not needed then).

Use, per epoch: `AugmentedSplit(...).tensors(epoch, start)` (or `.batches(...)`, numpy) in place of iterating
`dataset.load(...).skip(start)`.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from dsflow import UserError, augment, augspec, dataset
from dsflow.mfcc import INT16_MAX, N_INPUT, mfcc, mfcc_of_spectrogram, spectrogram

LABEL_PAD = dataset.LABEL_PAD


# ---------------------------------------------------------------------------------------------- overlay sources

class OverlaySource:
    """The clips of an overlay source CSV: paths and lengths (from the WAV headers), audio read when used."""

    def __init__(self, csv_path: str, sample_rate: int):
        from dsflow import audio, csvfile

        if str(csv_path).lower().endswith(".sdb"):
            raise UserError(f"source {csv_path}: DeepSpeech's SDB sample databases are not supported; give a "
                            "DeepSpeech CSV (wav_filename column) of WAV files")
        frame = csvfile.read(csv_path, ("wav_filename",))
        if frame.empty:
            raise UserError(f"source {csv_path}: no rows")
        self.paths, self.lengths = [], []
        for row, path in zip(frame["row"], frame["path"]):
            try:
                info = audio.probe(path)
            except (audio.NotWav, OSError) as e:
                raise UserError(f"source {csv_path}: row {row}: {path}: not a readable WAV ({e})") from None
            if info.subtype != audio.PCM16 or info.channels != 1 or info.sample_rate != sample_rate:
                raise UserError(f"source {csv_path}: row {row}: {path}: {info.subtype}, {info.channels} channel(s), "
                                f"{info.sample_rate} Hz; overlay audio must be 16-bit mono at {sample_rate} Hz "
                                "(convert it with sox)")
            if info.frames == 0 or info.truncated:
                raise UserError(f"source {csv_path}: row {row}: {path}: "
                                f"{'no samples' if info.frames == 0 else 'truncated file'}")
            self.paths.append(path)
            self.lengths.append(info.frames)
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.paths)

    @functools.lru_cache(maxsize=32)
    def clip(self, k: int) -> np.ndarray:
        from dsflow.audio import read_pcm16

        samples = read_pcm16(self.paths[k], f"overlay source {self.paths[k]}", self.sample_rate)
        return samples.astype(np.float32) / np.float32(32767)


_sources: dict = {}


def overlay_source(csv_path: str, sample_rate: int, load: bool = True) -> OverlaySource:
    """The source CSV's clips (checked: every file a 16-bit mono WAV at `sample_rate`), once per process."""
    key = (str(csv_path), sample_rate)
    if key not in _sources:
        source = OverlaySource(csv_path, sample_rate)
        if not load:
            return source
        _sources[key] = source
    return _sources[key]


# ---------------------------------------------------------------------------------------------- one clip

def rng_for(seed: int, epoch: int, index: int, position: int) -> np.random.Generator:
    """The random numbers of one augmentation (its position in the spec list) on one clip in one epoch."""
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, epoch, index, position])


def chosen(augmentations, seed: int, epoch: int, index: int) -> list:
    """The augmentations that apply to this clip in this epoch: each with its probability p, decided up front
    from one generator (so that a clip none applies to costs nothing more than its features)."""
    if not augmentations:
        return []
    draws = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, epoch, index]).random(
        1 + max(a.position for a in augmentations))
    return [a for a in augmentations if draws[a.position] < a.p]


def run_domain(x, applied, domain: str, seed: int, epoch: int, index: int, clock: float, ctx: augment.Context):
    """Apply the chosen augmentations of `domain`, in order."""
    for aug in applied:
        if aug.domain == domain and len(x):
            x = aug.apply(x, rng_for(seed, epoch, index, aug.position), clock, ctx)
    return x


def clip_features(samples: np.ndarray, augmentations, seed: int, epoch: int, index: int, clock: float,
                  ctx: augment.Context, win_len_ms: float, win_step_ms: float) -> np.ndarray:
    """DeepSpeech's features of one training clip (int16 samples) with its augmentations: float32 [T, 26].
    Without augmentations this is dsflow.mfcc.mfcc(samples) exactly, as in the features folder."""
    applied = chosen(augmentations, seed, epoch, index)
    domains = {aug.domain for aug in applied}
    audio = samples
    args = (seed, epoch, index, clock, ctx)
    if domains & {"sample", "signal"}:
        audio = samples.astype(np.float32) / INT16_MAX  # pcm_to_np; augmented audio stays float, as in DeepSpeech
        audio = run_domain(audio, applied, "sample", *args)
        audio = run_domain(np.asarray(audio, np.float32), applied, "signal", *args).astype(np.float32)
    rate = ctx.sample_rate
    if "spectrogram" in domains:  # the two ops one at a time: the same result as mfcc's fused blocks
        features = mfcc_of_spectrogram(run_domain(spectrogram(audio, rate, win_len_ms, win_step_ms), applied,
                                                  "spectrogram", *args), rate)
    else:
        features = mfcc(audio, rate, win_len_ms, win_step_ms)
    return run_domain(features, applied, "features", *args).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------- workers

_worker: dict = {}


def _init(specs, sample_rate, win_len, win_step, seed, n_clips, epochs, nice) -> None:
    """A worker process's start: its niceness, one BLAS thread, the parsed augmentations."""
    from threadpoolctl import threadpool_limits

    if nice:
        os.nice(nice)
    threadpool_limits(1, user_api="blas")  # parallel over batches already; TensorFlow has the other threads
    _state(specs, sample_rate, win_len, win_step, seed, n_clips, epochs)


def _state(specs, sample_rate, win_len, win_step, seed, n_clips, epochs) -> None:
    _worker.update(augs=augspec.parse(specs, sample_rate, check_sources=False), sample_rate=sample_rate,
                   win_len=win_len, win_step=win_step, seed=seed, n_clips=n_clips, epochs=epochs)


def clock(epoch: int, index: int, n_clips: int, epochs: int) -> float:
    """DeepSpeech's training clock of clip `index` in `epoch`: 0 at the start of training, 1 at its end."""
    return (epoch * n_clips + index) / (epochs * n_clips) if epochs > 0 and n_clips > 0 else 0.0


def _batch_features(epoch: int, rows) -> list[np.ndarray]:
    """One task: the features [T, 26] of each of rows (index, path, label length)."""
    from dsflow.audio import read_pcm16

    w = _worker
    out = []
    for index, path, label_length in rows:
        samples = read_pcm16(path, path, w["sample_rate"])
        ctx = augment.Context(w["sample_rate"], w["win_step"], label_length)
        out.append(clip_features(samples, w["augs"], w["seed"], epoch, index,
                                 clock(epoch, index, w["n_clips"], w["epochs"]), ctx, w["win_len"], w["win_step"]))
    return out


def pad(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(features [B, T, 26] zero-padded to the longest clip, lengths [B])."""
    lengths = np.array([len(f) for f in clips], np.int32)
    features = np.zeros((len(clips), int(lengths.max(initial=0)), N_INPUT), np.float32)
    for i, f in enumerate(clips):
        features[i, :len(f)] = f
    return features, lengths


def regrouped(first: int, clips: list[np.ndarray], frames, batch_size: int):
    """The batches of a window of clips (clip indices first.., their features, their unaugmented frame counts):
    [(clip indices, features)], re-cut by augmented length (stable) when any length changed, else as they were."""
    lengths = np.array([len(f) for f in clips])
    order = np.argsort(lengths, kind="stable") if not np.array_equal(lengths, frames) else np.arange(len(clips))
    return [([first + int(k) for k in part], [clips[k] for k in part])
            for part in np.split(order, range(batch_size, len(order), batch_size))]


# ---------------------------------------------------------------------------------------------- the split

class AugmentedSplit:
    """A training split's batches with augmentations, epoch by epoch (see the module docstring).

    `augment_specs`: the `augment` strings (checked here: UserError). `random_seed`: the run's. `epochs`: the run's
    --epochs (the clock's end). `workers`: processes computing batches (0: in this process); `ahead`: batches in
    flight or waiting (default two windows, at least 4 per worker); `nice`: the workers' niceness (0: 10 was not
    faster beside TensorFlow, and starved the workers when other jobs loaded the machine); `regroup`: batches a
    window has (1: none regrouped)."""

    def __init__(self, features_dir, alphabet, batch_size: int, augment_specs, random_seed: int = 4568,
                 epochs: int = 75, workers: int = 1, ahead: int | None = None, nice: int = 0, regroup: int = 8):
        from dsflow.alphabet import Alphabet

        self.dir = Path(features_dir)
        meta = dataset.meta(self.dir)
        index = dataset.info(self.dir)
        if index.empty:
            raise UserError(f"{self.dir / dataset.INDEX}: no utterances")
        self.alphabet = alphabet if isinstance(alphabet, Alphabet) else Alphabet.from_file(alphabet)
        self.sample_rate, self.win_len, self.win_step = meta["sample_rate"], meta["win_len_ms"], meta["win_step_ms"]
        self.specs = list(augment_specs or [])
        self.augmentations = augspec.parse(self.specs, self.sample_rate)
        self.paths = list(index["wav_filename"])
        bad = [f"{p}: {self.alphabet.missing(t) or 'empty transcript'}"
               for p, t in zip(self.paths, index["transcript"]) if not t or self.alphabet.missing(t)]
        if bad:
            raise UserError(f"{self.dir}: {len(bad)} transcripts cannot be encoded with {self.alphabet.source}: "
                            + "; ".join(bad[:5]))
        self.labels = [np.array(self.alphabet.encode(t), np.int32) for t in index["transcript"]]
        self.batch_size, self.seed, self.epochs = batch_size, random_seed, epochs
        self.n_batches = len(self.paths) // batch_size  # DeepSpeech drops the last partial training batch
        self.cached = all(a.domain == "features" for a in self.augmentations)
        self.workers = 0 if self.cached else max(0, workers)
        self.regroup = max(1, regroup)
        self.frames = np.asarray(index["n_frames"])
        self.ahead = ahead or max(2 * self.regroup, 4 * self.workers)
        self.nice = nice
        self.waited = 0.0  # seconds the consumer waited for the workers in the current `batches` (log it per epoch)
        self._pool = None

    # -- batches

    def _rows(self, b: int):
        first = b * self.batch_size
        return [(i, self.paths[i], len(self.labels[i])) for i in range(first, first + self.batch_size)]

    def _finish(self, idx: list[int], clips: list[np.ndarray]) -> dict:
        features, lengths = pad(clips)
        label_lengths = np.array([len(self.labels[i]) for i in idx], np.int32)
        labels = np.full((len(idx), int(label_lengths.max())), LABEL_PAD, np.int32)
        for row, i in enumerate(idx):
            labels[row, :label_lengths[row]] = self.labels[i]
        names = np.array([self.paths[i].encode("utf-8") for i in idx], dtype=object)
        return {"features": features, "feature_lengths": lengths, "labels": labels,
                "label_lengths": label_lengths, "wav_filename": names}

    def batches(self, epoch: int, start: int = 0):
        """Batches `start`.. of `epoch` as dicts of numpy arrays (dataset.load's keys, shapes and dtypes)."""
        if self.cached:
            yield from self._cached_batches(epoch, start)
            return
        first = start - start % self.regroup  # the window of batch `start` is computed whole
        stream = self._clip_batches(epoch, first)
        try:
            for window in range(first, self.n_batches, self.regroup):
                clips = [c for _ in range(min(self.regroup, self.n_batches - window)) for c in next(stream)]
                lo = window * self.batch_size
                for b, (idx, part) in enumerate(regrouped(lo, clips, self.frames[lo:lo + len(clips)],
                                                          self.batch_size), window):
                    if b >= start:
                        yield self._finish(idx, part)
        finally:
            stream.close()

    def _clip_batches(self, epoch: int, start: int):
        """The clips' features of batches start.. of `epoch` in DeepSpeech's order, computed ahead by the workers."""
        if self.workers == 0:
            _state(self.specs, self.sample_rate, self.win_len, self.win_step, self.seed, len(self.paths),
                   self.epochs)
            for b in range(start, self.n_batches):
                yield _batch_features(epoch, self._rows(b))
            return
        pool = self._executor()
        self.waited = 0.0
        todo = iter(range(start, self.n_batches))
        pending = deque(pool.submit(_batch_features, epoch, self._rows(b)) for b in itertools.islice(todo, self.ahead))
        try:
            while pending:
                future = pending.popleft()
                for nxt in itertools.islice(todo, 1):
                    pending.append(pool.submit(_batch_features, epoch, self._rows(nxt)))
                if not future.done():
                    t = time.monotonic()
                    future.result()
                    self.waited += time.monotonic() - t
                yield future.result()
        finally:
            for future in pending:
                future.cancel()

    def _cached_batches(self, epoch: int, start: int):
        ds = dataset.load(self.dir, self.alphabet, self.batch_size, train=True)
        n_clips = len(self.paths)
        for b, batch in enumerate(ds.skip(start) if start else ds, start):
            batch = {k: v.numpy() for k, v in batch.items()}
            if self.augmentations:
                features = batch["features"]
                for row, n in enumerate(batch["feature_lengths"]):
                    i = b * self.batch_size + row
                    ctx = augment.Context(self.sample_rate, self.win_step, len(self.labels[i]))
                    applied = chosen(self.augmentations, self.seed, epoch, i)
                    features[row, :n] = run_domain(features[row, :n], applied, "features", self.seed,
                                                           epoch, i, clock(epoch, i, n_clips, self.epochs), ctx)
            yield batch

    def tensors(self, epoch: int, start: int = 0):
        """The same batches as dicts of tf.Tensors, like dataset.load's: the trainer's drop-in for iterating
        `dataset.load(...).skip(start)` in epoch `epoch`. Converted in the caller's thread: a tf.data
        from_generator pipeline measured 30% slower training here (its prefetch blocks one of TensorFlow's
        inter-op threads while it waits for a worker)."""
        import tensorflow as tf

        for batch in self.batches(epoch, start):
            yield {key: tf.constant(value, tf.string if key == "wav_filename" else None)
                   for key, value in batch.items()}

    # -- worker processes

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            workers = min(self.workers, len(os.sched_getaffinity(0)))
            context = multiprocessing.get_context("forkserver")  # not a fork of a process running TF's threads
            context.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(workers, context, _init, (
                self.specs, self.sample_rate, self.win_len, self.win_step, self.seed, len(self.paths), self.epochs,
                self.nice))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "AugmentedSplit":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
