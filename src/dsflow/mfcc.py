"""DeepSpeech 0.9.3's acoustic features (util/feeding.py `audio_to_features`), computed exactly in numpy.

DeepSpeech runs TensorFlow's `AudioSpectrogram` (periodic Hann window, FFT length = next power of two,
magnitude squared) and `Mfcc` (40 mel channels between 20 Hz and rate/2, log floored at 1e-12, DCT-II scaled by
sqrt(2/40), 26 coefficients) on int16/32767 audio. `mfcc` below is the same arithmetic as those kernels
(tensorflow/core/kernels/spectrogram.cc, mfcc_mel_filterbank.cc, mfcc_dct.cc) written as a few vectorized numpy
operations (and one FFTW real FFT) over blocks of frames, in float64 like the kernels, with the spectrogram
rounded to float32 between the two ops like the graph does. On real audio the result is bit-identical to the
ops but for a rare 1-ulp difference (tests/test_features.py checks it with a 1-2 float32-step tolerance).
`spectrogram` and `mfcc_of_spectrogram` are the two ops one at a time (for augmentations that work on the
spectrogram); `mfcc` is both, fused block by block, with the same result. All three take int16 samples, or
float32 audio already scaled as DeepSpeech's pcm_to_np scales it (int16 / 32767: augmented audio stays float).

This module owns the feature arithmetic's constants: N_INPUT (DeepSpeech's util/config.py n_input) and the
window sizes in samples (`window_samples`).
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np

N_INPUT = 26  # MFCC coefficients per frame: DeepSpeech's util/config.py n_input
FILTERBANK_CHANNELS = 40  # Mfcc op default
LOWER_FREQUENCY_LIMIT = 20.0  # Mfcc op default
FILTERBANK_FLOOR = 1e-12  # mfcc.cc kFilterbankFloor
BLOCK = 128  # frames per block (bench: 64 is 5% slower; 256 no faster)
INT16_MAX = np.float32(np.iinfo(np.int16).max)


@functools.lru_cache(maxsize=16)
def window_samples(sample_rate: int, win_len_ms: float, win_step_ms: float) -> tuple[int, int]:
    """(window, stride) in samples. DeepSpeech exits unless both are whole numbers of samples: ValueError
    naming the config key (feature_win_len, feature_win_step)."""
    out = []
    for key, ms in (("feature_win_len", win_len_ms), ("feature_win_step", win_step_ms)):
        n = ms * sample_rate / 1000
        if n != int(n) or n <= 0:
            raise ValueError(f"{key}={ms:g} ms at audio_sample_rate={sample_rate} Hz is {n:g} samples, not a positive "
                             "whole number of samples (DeepSpeech exits on this too)")
        out.append(int(n))
    return out[0], out[1]


def n_frames(samples: int, window: int, stride: int) -> int:
    """Feature frames of `samples` audio samples (no padding: a partial last window is dropped)."""
    return 0 if samples < window else 1 + (samples - window) // stride


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


def _frames(samples: np.ndarray, sample_rate: int, win_len_ms: float, win_step_ms: float):
    """(overlapping float32 frames [T, window] as a view of the scaled audio, window, tables)."""
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"mono audio expected, got shape {samples.shape}")
    window, stride = window_samples(sample_rate, win_len_ms, win_step_ms)
    tables = _tables(window, sample_rate, sample_rate / 2)
    if samples.dtype == np.float32:  # already DeepSpeech's float audio (augmented audio, dsflow.augment)
        audio = samples
    elif samples.dtype.kind in "iu":
        audio = samples.astype(np.float32) / INT16_MAX  # pcm_to_np: /32767 in float32
    else:
        raise ValueError(f"int16 samples or float32 audio (int16 / 32767) expected, got {samples.dtype}")
    n = n_frames(len(audio), window, stride)
    # the overlapping frames as a view of `audio`: sliding_window_view(audio, window)[::stride] in 1 us, not 40
    frames = np.ndarray((n, window), audio.dtype, audio, 0, (stride * audio.itemsize, audio.itemsize))
    return frames, window, tables


def _power(chunk: np.ndarray, window: int, hann: np.ndarray, work: "_Work") -> np.ndarray:
    """AudioSpectrogram of a block of frames: |rfft(frame * hann)|^2 summed in float64, stored as float32."""
    n = len(chunk)
    np.multiply(chunk, hann, out=work.windowed[:n, :window])  # zero-padded to the FFT length, like the kernel
    work.rfft(n)  # float64 like the kernel
    parts = work.spectrum[:n].view(np.float64)  # [re, im, re, im, ...]
    np.multiply(parts, parts, out=parts)
    power = work.power[:n]
    np.add(parts[:, 0::2], parts[:, 1::2], out=power, casting="same_kind")
    return power


def _mfcc(power: np.ndarray, melmatrix: np.ndarray, dct: np.ndarray, work: "_Work") -> np.ndarray:
    """The Mfcc op on a block of float32 power spectra: sqrt (float64), mel filterbank, log, DCT."""
    magnitude = np.sqrt(power, out=work.magnitude[:len(power)], dtype=np.float64)
    mel = magnitude @ melmatrix
    np.maximum(mel, FILTERBANK_FLOOR, out=mel)
    np.log(mel, out=mel)
    return mel @ dct


def mfcc(samples: np.ndarray, sample_rate: int, win_len_ms: float = 32, win_step_ms: float = 20) -> np.ndarray:
    """DeepSpeech's features of int16 mono `samples`: float32 [T, 26], T = 1 + (N - window) // stride.

    Frames are processed in blocks that stay in the CPU cache. The small matrix products go
    through BLAS: callers that run this on several threads should limit BLAS to one thread
    (`dsflow features` does), as OpenBLAS's own threads otherwise fight with theirs and TF's.
    """
    frames, window, (hann, fft_length, melmatrix, dct) = _frames(samples, sample_rate, win_len_ms, win_step_ms)
    out = np.empty((len(frames), N_INPUT), np.float32)
    work = _work(fft_length)
    for i in range(0, len(frames), BLOCK):
        out[i:i + BLOCK] = _mfcc(_power(frames[i:i + BLOCK], window, hann, work), melmatrix, dct, work)
    return out


def spectrogram(samples: np.ndarray, sample_rate: int, win_len_ms: float = 32, win_step_ms: float = 20) -> np.ndarray:
    """DeepSpeech's AudioSpectrogram of int16 mono `samples` (magnitude squared): float32 [T, fft_length/2 + 1]."""
    frames, window, (hann, fft_length, _, _) = _frames(samples, sample_rate, win_len_ms, win_step_ms)
    out = np.empty((len(frames), fft_length // 2 + 1), np.float32)
    work = _work(fft_length)
    for i in range(0, len(frames), BLOCK):
        out[i:i + BLOCK] = _power(frames[i:i + BLOCK], window, hann, work)
    return out


def mfcc_of_spectrogram(power: np.ndarray, sample_rate: int) -> np.ndarray:
    """DeepSpeech's Mfcc op on a float32 power spectrogram [T, bins] (from `spectrogram`, possibly augmented):
    float32 [T, 26]. mfcc(x) == mfcc_of_spectrogram(spectrogram(x)) exactly."""
    power = np.asarray(power, np.float32)
    fft_length = 2 * (power.shape[1] - 1)
    _, _, melmatrix, dct = _tables(fft_length, sample_rate, sample_rate / 2)  # the tables depend on bins only
    out = np.empty((len(power), N_INPUT), np.float32)
    work = _work(fft_length)
    for i in range(0, len(power), BLOCK):
        out[i:i + BLOCK] = _mfcc(power[i:i + BLOCK], melmatrix, dct, work)
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
        import pyfftw  # here: a module that only checks window sizes (config) need not load FFTW

        self.windowed = pyfftw.zeros_aligned((BLOCK, fft_length))  # the zero padding beyond the window stays 0
        self.spectrum = pyfftw.empty_aligned((BLOCK, bins), np.complex128)
        self.power = np.empty((BLOCK, bins), np.float32)
        self.magnitude = np.empty((BLOCK, bins))

    def rfft(self, n: int) -> None:
        """spectrum[:n] = rfft(windowed[:n]) along the rows."""
        plan = self._plans.get(n)
        if plan is None:  # FFTW_ESTIMATE: planning does not write to the arrays and takes microseconds
            import pyfftw

            plan = self._plans[n] = pyfftw.FFTW(self.windowed[:n], self.spectrum[:n], axes=(1,),
                                                flags=("FFTW_ESTIMATE",), threads=1)
        plan.execute()


_local = threading.local()


def _work(fft_length: int) -> _Work:
    work = getattr(_local, "work", None)
    if work is None or work.fft_length != fft_length:
        work = _local.work = _Work(fft_length)
    return work


