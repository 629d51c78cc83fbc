"""DeepSpeech 0.9.3's training augmentations (`--augment`, util/augmentations.py): what each one does to a clip.

dsflow.augspec parses the `augment` specs into these objects; dsflow.augmented runs them over a training split.
The defaults, units and math are DeepSpeech's: volume/overlay/reverb levels are peak dBFS (`max_dbfs`), masks are
in spectrogram bins, frames or samples, `time_mask` size is in ms, tempo/pitch/warp are TF1's resize_bilinear /
resize_bicubic (align_corners and half_pixel_centers off) and contrib's dense_image_warp, written here in numpy
float32 (dsflow.imageops).

Differences from DeepSpeech, on purpose:
- Randomness: each clip draws from numpy generators seeded by (random_seed, epoch, clip index, position of the
  spec), so a run is reproducible and a resumed epoch repeats its clips exactly. DeepSpeech drew the
  sample-domain choices from unseeded `random` in its worker pool and the graph ones from stateless TF ops seeded
  by the clock alone (so every value picked for one clip came from the same uniform number).
- `dropout` zeroes a fraction `rate` of the values, as its documentation says; DeepSpeech's formula
  (`x * sign(floor(u + rate))`) keeps a fraction `rate` and zeroes the rest.
- `overlay`: the source is a DeepSpeech CSV of 16-bit mono WAVs at the training rate (no SDB). DeepSpeech fed
  one queue of source clips, in order, to all workers (which clips met which was up to the scheduler); here
  each layer starts in a random source clip at a random sample and continues through the following clips.
- `resample`: soxr at its very-high quality (DeepSpeech: librosa's default, resampy `kaiser_best`).
- `codec`: libopus through opuslib 3.0.1 (DeepSpeech: opuslib 2.0.0, same calls: 60 ms frames, application
  "audio", the last frame zero-padded), with the system's libopus, so the coded audio differs by its version.
  Audio beyond full scale is clipped to int16 before coding (DeepSpeech's cast wrapped around). The extra key
  `complexity` (default 9, libopus 1.3's default, which DeepSpeech ran with) trades the codec's fidelity for
  speed: the codec is by far the most expensive augmentation (bench/bench_augment.py).
- `warp`: the time and frequency flows are drawn from one normal sample as in DeepSpeech (its two stateless
  draws share a seed), so they stay proportional; kept.
- A mask or warp on a clip too short for it (fewer than 2 frames) leaves the clip as it is (DeepSpeech failed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DOMAINS = ("signal", "spectrogram", "features")
FLOAT32 = np.float32


# ---------------------------------------------------------------------------------------------- audio levels

def max_dbfs(audio) -> float:
    """Peak dBFS (DeepSpeech's util/audio.py max_dbfs: rms_to_dbfs of the largest absolute sample)."""
    peak = max(abs(float(np.min(audio))), abs(float(np.max(audio)))) if len(audio) else 0.0
    return 20.0 * math.log10(max(1e-16, peak)) + 3.0103


def gain_db_to_ratio(gain_db: float) -> float:
    return math.pow(10.0, gain_db / 20.0)


def normalize_audio(audio, dbfs: float = 3.0103):
    """Scale to a peak of `dbfs` and clip to [-1, 1] (3.0103 dBFS: a peak of 1.0)."""
    return np.clip(audio * gain_db_to_ratio(dbfs - max_dbfs(audio)), -1.0, 1.0)


# ---------------------------------------------------------------------------------------------- the augmentations

class Augmentation:
    """One parsed spec. `keys` maps each parameter to (kind, default, allowed (lo, hi) or None, what it means)."""
    name = ""
    domain = "sample"
    keys: dict = {}

    def __init__(self, spec: str, **values):
        self.spec = spec
        self.p = values.pop("p")
        for key, value in values.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"<{self.spec}>"

    def apply(self, x, rng, clock, ctx):  # pragma: no cover - every subclass has one
        raise NotImplementedError


@dataclass(frozen=True)
class Context:
    """What an augmentation may need to know about the clip: its rate, the feature step and transcript length."""
    sample_rate: int
    win_step_ms: float
    label_length: int


def _units_per_ms(domain: str, ctx: Context) -> float:
    return ctx.sample_rate / 1000.0 if domain == "signal" else 1.0 / ctx.win_step_ms


class Overlay(Augmentation):
    name = "overlay"
    keys = {"source": (str, None, None, "DeepSpeech CSV of the audio to layer onto clips"),
            "snr": (float, "3", None, "dB of the clip's peak over the overlay's"),
            "layers": (int, "1", (0, 1000), "layers of overlay audio")}

    def apply(self, audio, rng, clock, ctx):
        from dsflow.augmented import overlay_source  # the worker process's loaded source clips

        source = overlay_source(self.source, ctx.sample_rate)
        overlay = np.zeros_like(audio)
        for _ in range(self.layers.pick(rng, clock)):  # a layer: source clips end to end, from a random sample
            k = int(rng.integers(len(source)))
            offset, pos = int(rng.integers(source.lengths[k])), 0
            while pos < len(audio):
                part = source.clip(k)[offset:offset + len(audio) - pos]
                overlay[pos:pos + len(part)] += part
                pos, k, offset = pos + len(part), (k + 1) % len(source), 0
        snr = self.snr.pick(rng, clock)
        orig = max_dbfs(audio)
        audio = audio + overlay * FLOAT32(gain_db_to_ratio(orig - max_dbfs(overlay) - snr))
        return normalize_audio(audio, orig)


class Reverb(Augmentation):
    name = "reverb"
    keys = {"delay": (float, "20", (0, math.inf), "ms to the first reflection"),
            "decay": (float, "10", (0, math.inf), "dB lost per reflection")}

    def apply(self, audio, rng, clock, ctx):
        audio = np.asarray(audio, np.float64)
        orig = max_dbfs(audio)
        delay = self.delay.pick(rng, clock)
        decay = gain_db_to_ratio(-self.decay.pick(rng, clock))
        result = audio.copy()
        primes = (17, 19, 23, 29, 31)  # DeepSpeech's: primes keep the five comb filters apart
        for prime in primes:
            layer = audio.copy()
            n = max(16, math.floor(delay * (prime / primes[0]) * ctx.sample_rate / 1000.0))
            for w in range(len(audio) // n):  # a feedback comb filter, one delay window at a time
                w1, w2 = w * n, (w + 1) * n
                width = min(len(audio) - w2, n)
                layer[w2:w2 + width] += decay * layer[w1:w1 + width]
            result += layer
        return normalize_audio(result, orig).astype(FLOAT32)


class Resample(Augmentation):
    name = "resample"
    keys = {"rate": (int, "8000", (1000, 384000), "sample rate to resample to and back from")}

    def apply(self, audio, rng, clock, ctx):
        import soxr

        rate = self.rate.pick(rng, clock)
        there = soxr.resample(audio, ctx.sample_rate, rate, quality="VHQ")
        back = soxr.resample(there, rate, ctx.sample_rate, quality="VHQ")[:len(audio)]
        return np.pad(back, (0, len(audio) - len(back))).astype(FLOAT32, copy=False)


class Codec(Augmentation):
    name = "codec"
    keys = {"bitrate": (int, "3200", (500, 512000), "Opus bitrate in bit/s"),
            "complexity": (int, "9", (0, 10), "[dsflow] Opus encoder complexity (9: libopus's default, "
                                               "DeepSpeech's; 0 is 3-4x faster)")}
    RATES = (8000, 12000, 16000, 24000, 48000)  # the rates Opus codes

    def apply(self, audio, rng, clock, ctx):
        import opuslib

        bitrate = self.bitrate.pick(rng, clock)
        pcm = np.clip(audio * FLOAT32(32767), -32768, 32767).astype(np.int16)  # np_to_pcm (truncates)
        frame = 60 * ctx.sample_rate // 1000
        encoder = opuslib.Encoder(ctx.sample_rate, 1, "audio")
        encoder.bitrate = bitrate
        encoder.complexity = self.complexity.pick(rng, clock)
        decoder = opuslib.Decoder(ctx.sample_rate, 1)
        out = bytearray()
        for i in range(0, len(pcm), frame):
            chunk = np.pad(pcm[i:i + frame], (0, max(0, frame - len(pcm[i:i + frame]))))
            out += decoder.decode(encoder.encode(chunk.tobytes(), frame), frame)
        return np.frombuffer(bytes(out), "<i2")[:len(pcm)].astype(FLOAT32) / FLOAT32(32767)


class Volume(Augmentation):
    name = "volume"
    keys = {"dbfs": (float, "3.0103", None, "target peak dBFS (3.0103: peak at full scale)")}

    def apply(self, audio, rng, clock, ctx):
        return normalize_audio(audio, self.dbfs.pick(rng, clock))


class Pitch(Augmentation):
    name = "pitch"
    domain = "spectrogram"
    keys = {"pitch": (float, "1.075~0.125", (1e-3, math.inf), "factor on the frequency axis")}

    def apply(self, spec, rng, clock, ctx):
        from dsflow.imageops import resize_bilinear

        bins = spec.shape[1]
        new = int(FLOAT32(bins) * FLOAT32(self.pitch.pick(rng, clock)))
        if new < 1:
            return np.zeros_like(spec)
        out = resize_bilinear(spec, len(spec), new)[:, :bins]
        return np.pad(out, ((0, 0), (0, bins - out.shape[1])))


class Tempo(Augmentation):
    name = "tempo"
    domain = "spectrogram"
    keys = {"factor": (float, "1.1", (1e-3, math.inf), "speed factor on the time axis"),
            "max_time": (float, "-1", None, "longest result in ms (<= 0: no limit)")}

    def apply(self, spec, rng, clock, ctx):
        from dsflow.imageops import resize_bilinear

        frames = int(FLOAT32(len(spec)) / FLOAT32(self.factor.pick(rng, clock)))
        frames = max(frames, ctx.label_length)  # never fewer frames than the transcript's characters
        if self.max_time > 0:
            frames = min(frames, int(self.max_time * _units_per_ms(self.domain, ctx)))
        return resize_bilinear(spec, frames, spec.shape[1]) if frames > 0 and len(spec) else spec


class Warp(Augmentation):
    name = "warp"
    domain = "spectrogram"
    keys = {"nt": (int, "1", (0, 1000), "warp grid lines on the time axis"),
            "nf": (int, "1", (0, 1000), "warp grid lines on the frequency axis"),
            "wt": (float, "0.1", (0, math.inf), "std of the time shift (1: half the grid spacing)"),
            "wf": (float, "0", (0, math.inf), "std of the frequency shift (1: half the grid spacing)")}

    def apply(self, spec, rng, clock, ctx):
        from dsflow.imageops import dense_image_warp, resize_bicubic

        size_t, size_f = spec.shape
        if size_t < 2 or size_f < 2:
            return spec
        nt, nf = self.nt.pick(rng, clock), self.nf.pick(rng, clock)
        std_t = FLOAT32(self.wt.pick(rng, clock)) * FLOAT32(size_t) / FLOAT32(2 * (nt + 1))
        std_f = FLOAT32(self.wf.pick(rng, clock)) * FLOAT32(size_f) / FLOAT32(2 * (nf + 1))
        z = rng.standard_normal((nt, nf), dtype=FLOAT32)
        flows = np.stack([np.pad(z * std_t, 1), np.pad(z * std_f, 1)], axis=2)  # zero flow at the edges
        return dense_image_warp(spec, resize_bicubic(flows, size_t, size_f))


class FrequencyMask(Augmentation):
    name = "frequency_mask"
    domain = "spectrogram"
    keys = {"n": (int, "3", (0, 10000), "masks"), "size": (int, "2", (0, 100000), "bins per mask")}

    def apply(self, spec, rng, clock, ctx):
        bins = spec.shape[1]
        if bins < 2:
            return spec
        spec = spec.copy()
        for _ in range(self.n.pick(rng, clock)):
            size = max(1, min(bins - 1, self.size.pick(rng, clock)))
            f0 = int(rng.integers(0, bins - size))
            spec[:, f0:f0 + size] = 0
        return spec


class TimeMask(Augmentation):
    name = "time_mask"
    domain = "spectrogram"
    keys = {"n": (int, "3", (0, 10000), "masks"), "size": (float, "10", (0, math.inf), "ms per mask"),
            "domain": (str, "spectrogram", DOMAINS, "signal, spectrogram or features")}

    def apply(self, x, rng, clock, ctx):
        length = len(x)
        if length < 2:
            return x
        x = x.copy()
        for _ in range(self.n.pick(rng, clock)):
            size = int(FLOAT32(self.size.pick(rng, clock)) * FLOAT32(_units_per_ms(self.domain, ctx)))
            size = max(1, min(length - 1, size))
            t0 = int(rng.integers(0, length - size))
            x[t0:t0 + size] = 0
        return x


class Dropout(Augmentation):
    name = "dropout"
    domain = "spectrogram"
    keys = {"rate": (float, "0.05", (-math.inf, 1), "fraction of values set to zero (below 0: none)"),
            "domain": (str, "spectrogram", DOMAINS, "signal, spectrogram or features")}

    def apply(self, x, rng, clock, ctx):
        rate = max(0.0, self.rate.pick(rng, clock))
        return x * (rng.random(x.shape, dtype=FLOAT32) >= FLOAT32(rate))


class Add(Augmentation):
    name = "add"
    domain = "features"
    keys = {"stddev": (float, "5", None, "std of the normal noise added (a negative one acts as its absolute)"),
            "domain": (str, "features", DOMAINS, "signal, spectrogram or features")}

    def apply(self, x, rng, clock, ctx):
        return x + rng.standard_normal(x.shape, dtype=FLOAT32) * FLOAT32(self.stddev.pick(rng, clock))


class Multiply(Augmentation):
    name = "multiply"
    domain = "features"
    keys = {"stddev": (float, "5", None, "std of the normal factor, mean 1 (a negative one acts as its absolute)"),
            "domain": (str, "features", DOMAINS, "signal, spectrogram or features")}

    def apply(self, x, rng, clock, ctx):
        stddev = FLOAT32(self.stddev.pick(rng, clock))
        return x * (rng.standard_normal(x.shape, dtype=FLOAT32) * stddev + FLOAT32(1))


AUGMENTATIONS = {cls.name: cls for cls in (Overlay, Reverb, Resample, Codec, Volume, Pitch, Tempo, Warp,
                                           FrequencyMask, TimeMask, Dropout, Add, Multiply)}
ORDER = ("sample", "signal", "spectrogram", "features")  # DeepSpeech's order of the domains
