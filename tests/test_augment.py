"""Augmentations (dsflow.augment, dsflow.imageops) and the augmented training batches (dsflow.augmented)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dsflow import UserError, augment, augmented
from dsflow.augment import Context, max_dbfs
from dsflow.augspec import ValueRange, parse, parse_one
from dsflow.mfcc import mfcc

ROOT = Path(__file__).resolve().parents[1]
ALPHABET = ROOT / "data/alphabet.txt"
RATE = 16000
CTX = Context(RATE, 20, 10)


@pytest.fixture(scope="module")
def ldc():
    samples, rate = sf.read(ROOT / "data/ldc93s1/LDC93S1.wav", dtype="int16")
    assert rate == RATE
    return samples


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, ldc):
    """20 clips of 1-2.5 s cut from LDC93S1, their features folder, and a noise source CSV."""
    from dsflow.features import write_features

    folder = tmp_path_factory.mktemp("augment")
    rng = np.random.default_rng(1)
    rows = ["wav_filename,wav_filesize,transcript"]
    for i in range(20):
        length = int(rng.uniform(1.0, 2.5) * RATE)
        start = int(rng.integers(0, len(ldc) - length))
        clip = np.clip(ldc[start:start + length] + rng.normal(0, 30, length), -32768, 32767).astype(np.int16)
        sf.write(folder / f"c{i:02d}.wav", clip, RATE, subtype="PCM_16")
        rows.append(f"c{i:02d}.wav,{(folder / f'c{i:02d}.wav').stat().st_size},she had your")
    (folder / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    write_features(folder / "train.csv", folder / "features", threads=1)
    t = np.arange(3 * RATE)
    sf.write(folder / "sine.wav", (10000 * np.sin(2 * np.pi * t / 16)).astype(np.int16), RATE, subtype="PCM_16")
    (folder / "noise.csv").write_text("wav_filename,wav_filesize,transcript\nsine.wav,0,\n", encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------------------- parsing

DEFAULTS = {
    "overlay[source={noise}]": {"snr": ValueRange(3.0, 3.0, 0.0), "layers": ValueRange(1, 1, 0)},
    "reverb": {"delay": ValueRange(20.0, 20.0, 0.0), "decay": ValueRange(10.0, 10.0, 0.0)},
    "resample": {"rate": ValueRange(8000, 8000, 0)},
    "codec": {"bitrate": ValueRange(3200, 3200, 0), "complexity": ValueRange(9, 9, 0)},
    "volume": {"dbfs": ValueRange(3.0103, 3.0103, 0.0)},
    "pitch": {"pitch": ValueRange(1.075, 1.075, 0.125)},
    "tempo": {"factor": ValueRange(1.1, 1.1, 0.0), "max_time": -1.0},
    "warp": {"nt": ValueRange(1, 1, 0), "nf": ValueRange(1, 1, 0), "wt": ValueRange(0.1, 0.1, 0.0),
             "wf": ValueRange(0.0, 0.0, 0.0)},
    "frequency_mask": {"n": ValueRange(3, 3, 0), "size": ValueRange(2, 2, 0)},
    "time_mask": {"n": ValueRange(3, 3, 0), "size": ValueRange(10.0, 10.0, 0.0), "domain": "spectrogram"},
    "dropout": {"rate": ValueRange(0.05, 0.05, 0.0), "domain": "spectrogram"},
    "add": {"stddev": ValueRange(5.0, 5.0, 0.0), "domain": "features"},
    "multiply": {"stddev": ValueRange(5.0, 5.0, 0.0), "domain": "features"},
}


def test_every_augmentation_parses_with_deepspeechs_defaults(corpus):
    assert {s.split("[")[0] for s in DEFAULTS} == set(augment.AUGMENTATIONS)
    for spec, values in DEFAULTS.items():
        aug = parse_one(spec.format(noise=corpus / "noise.csv"))
        assert aug.p == 1.0
        for key, value in values.items():
            assert getattr(aug, key) == value, (spec, key)
    domains = {s.split("[")[0]: parse_one(s.format(noise=corpus / "noise.csv")).domain for s in DEFAULTS}
    assert domains == {"overlay": "sample", "reverb": "sample", "resample": "sample", "codec": "sample",
                       "volume": "sample", "pitch": "spectrogram", "tempo": "spectrogram", "warp": "spectrogram",
                       "frequency_mask": "spectrogram", "time_mask": "spectrogram", "dropout": "spectrogram",
                       "add": "features", "multiply": "features"}


def test_value_ranges_follow_the_clock_and_radius():
    rng = np.random.default_rng(0)
    vr = parse_one("volume[p=0.3,dbfs=-10:-40]").dbfs
    assert (vr.pick(rng, 0.0), vr.pick(rng, 0.5), vr.pick(rng, 1.0), vr.pick(rng, 7)) == (-10, -25, -40, -40)
    vr = parse_one("time_mask[n=3:10~2]").n
    assert vr == ValueRange(3, 10, 2) and vr.integer
    picks = [vr.pick(rng, 0.0) for _ in range(300)]
    assert set(picks) == {1, 2, 3, 4, 5} and all(isinstance(v, int) for v in picks)
    vr = parse_one("pitch[pitch=1.2~0.4]").pitch
    picks = [vr.pick(rng, 0.3) for _ in range(300)]
    assert 0.8 <= min(picks) < 0.85 and 1.55 < max(picks) <= 1.6
    assert parse_one(" tempo[ p = 0.5 , factor = 0.8:1.2 ] ").factor == ValueRange(0.8, 1.2, 0.0)


def test_parse_orders_by_domain_then_as_given():
    augs = parse(["add", "time_mask[domain=signal]", "pitch", "volume", "dropout[domain=features]", "reverb"])
    assert [a.name for a in augs] == ["volume", "reverb", "time_mask", "pitch", "add", "dropout"]
    assert [a.position for a in augs] == [3, 5, 1, 2, 0, 4]
    assert parse(None) == [] and parse([]) == []


@pytest.mark.parametrize("spec, message", [
    ("echo", "unknown augmentation 'echo'"),
    ("Volume", "not of the form"),
    ("volume[dbfs]", "'dbfs' is not key=value"),
    ("volume[gain=3]", "unknown key 'gain'; volume takes p, dbfs"),
    ("volume[p=0.1,p=0.2]", "'p' given twice"),
    ("volume[p=1.5]", "p=1.5: probability takes values in [0, 1]"),
    ("volume[dbfs=loud]", "not a float range"),
    ("volume[dbfs=1~2~3]", "more than one '~'"),
    ("volume[dbfs=1:2:3]", "more than one ':'"),
    ("volume[dbfs=1~-2]", "must not be negative"),
    ("frequency_mask[n=1.5]", "not an int range"),
    ("pitch[pitch=0.1~0.2]", "reaches -0.1 to 0.3"),
    ("tempo[factor=0]", "speed factor"),
    ("codec[bitrate=100]", "[500, 512000]"),
    ("codec[complexity=11]", "[0, 10]"),
    ("resample[rate=8000~7500]", "[1000, 384000]"),
    ("dropout[rate=1.5]", "fraction of values"),
    ("time_mask[domain=audio]", "domain='audio': must be one of signal, spectrogram, features"),
    ("overlay", "'source' is required"),
    ("overlay[source=/no/such/noise.csv]", "CSV file does not exist"),
    ("overlay[source=noise.sdb]", "SDB"),
])
def test_bad_specs_raise_user_errors_naming_them(spec, message):
    with pytest.raises(UserError) as e:
        parse(["volume", spec])
    assert f"augment {spec!r}" in str(e.value) and message in str(e.value)


def test_bad_overlay_sources_and_rates(corpus, tmp_path):
    sf.write(tmp_path / "stereo.wav", np.zeros((800, 2), np.int16), RATE, subtype="PCM_16")
    (tmp_path / "bad.csv").write_text("wav_filename\nstereo.wav\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"row 1: .*stereo.wav: PCM_16, 2 channel"):
        parse([f"overlay[source={tmp_path / 'bad.csv'}]"])
    (tmp_path / "missing.csv").write_text("wav_filename\ngone.wav\n", encoding="utf-8")
    with pytest.raises(UserError, match="gone.wav: not a readable WAV"):
        parse([f"overlay[source={tmp_path / 'missing.csv'}]"])
    with pytest.raises(UserError, match="must be 16-bit mono at 8000 Hz"):
        parse([f"overlay[source={corpus / 'noise.csv'}]"], sample_rate=8000)
    with pytest.raises(UserError, match="Opus codes only"):
        parse(["codec"], sample_rate=44100)


# ---------------------------------------------------------------------------------------------- effects

def apply(spec, x, clock=0.0, ctx=CTX, seed=0):
    return parse_one(spec).apply(x, np.random.default_rng(seed), clock, ctx)


def test_volume_levels_the_peak_and_scales_the_rms_by_the_drawn_gain(ldc):
    audio = ldc.astype(np.float32) / 32767
    rms = math.sqrt(np.mean(audio.astype(np.float64) ** 2))
    out = apply("volume[dbfs=-10:-40]", audio, clock=0.5)  # -25 dBFS at half time
    assert max_dbfs(out) == pytest.approx(-25, abs=1e-4)
    gain = 20 * math.log10(math.sqrt(np.mean(out.astype(np.float64) ** 2)) / rms)
    assert gain == pytest.approx(-25 - max_dbfs(audio), abs=1e-4)


def test_masks_zero_the_drawn_number_of_frames_bins_and_samples():
    spec = np.random.default_rng(0).uniform(1, 2, (300, 257)).astype(np.float32)
    out = apply("time_mask[n=1,size=100]", spec)  # 100 ms / 20 ms steps = 5 frames
    zero_rows = np.flatnonzero((out == 0).all(axis=1))
    assert len(zero_rows) == 5 and np.ptp(zero_rows) == 4 and (out != 0).sum() == 295 * 257
    out = apply("frequency_mask[n=1,size=3]", spec)
    assert len(np.flatnonzero((out == 0).all(axis=0))) == 3 and (out != 0).sum() == 300 * 254
    audio = np.ones(16000, np.float32)
    assert (apply("time_mask[n=1,size=10,domain=signal]", audio) == 0).sum() == 160  # 10 ms at 16 kHz
    features = np.ones((50, 26), np.float32)
    assert (apply("time_mask[n=2,size=40,domain=features]", features) == 0).all(axis=1).sum() in (2, 3, 4)


def test_overlay_mixes_at_the_snr_and_keeps_the_peak(corpus, ldc):
    audio = ldc.astype(np.float32) / 32767
    out = apply(f"overlay[source={corpus / 'noise.csv'},snr=10]", audio, seed=3)
    assert max_dbfs(out) == pytest.approx(max_dbfs(audio), abs=1e-4)
    t = np.arange(len(audio))
    basis = np.stack([audio, np.sin(2 * np.pi * t / 16), np.cos(2 * np.pi * t / 16)], axis=1).astype(np.float64)
    (k, s, c), *_ = np.linalg.lstsq(basis, out.astype(np.float64), rcond=None)
    overlay_peak = math.hypot(s, c) / k  # the 1 kHz sine's peak, before the final levelling
    assert 20 * math.log10(np.abs(audio).max() / overlay_peak) == pytest.approx(10, abs=0.01)


def test_reverb_adds_the_five_delayed_combs():
    impulse = np.zeros(4000, np.float32)
    impulse[0] = 0.5
    out = apply("reverb[delay=20,decay=6]", impulse)  # the clip plus five comb-filtered copies of it
    assert max_dbfs(out) == pytest.approx(max_dbfs(impulse), abs=1e-4)
    for prime in (17, 19, 23, 29, 31):
        n = math.floor(20 * prime / 17 * 16)
        assert out[n] > 0 and out[2 * n] > 0 and out[n] / out[0] == pytest.approx(10 ** (-6 / 20) / 6, rel=1e-5)
    assert np.count_nonzero(out[1:320]) == 0


def test_resample_keeps_the_length_and_removes_what_the_lower_rate_cannot_hold():
    t = np.arange(16001) / RATE
    low = (0.5 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    high = (0.5 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    out_low, out_high = apply("resample[rate=8000]", low), apply("resample[rate=8000]", high)
    assert len(out_low) == len(low) == len(out_high) and out_low.dtype == np.float32
    assert np.corrcoef(out_low[100:-100], low[100:-100])[0, 1] > 0.999
    assert np.sqrt(np.mean(out_high[100:-100] ** 2)) < 0.01


def test_codec_round_trips_through_opus(ldc):
    audio = ldc[:16000].astype(np.float32) / 32767
    out = apply("codec[bitrate=32000]", audio)
    assert len(out) == len(audio) and out.dtype == np.float32 and not np.array_equal(out, audio)
    assert 0.5 < np.std(out) / np.std(audio) < 2
    fast = apply("codec[bitrate=32000,complexity=0]", audio)
    assert len(fast) == len(audio) and not np.array_equal(fast, out)


def test_pitch_tempo_warp_geometry():
    spec = np.random.default_rng(0).uniform(1, 2, (100, 257)).astype(np.float32)
    assert np.array_equal(apply("pitch[pitch=1]", spec), spec)
    low = apply("pitch[pitch=0.5]", spec)  # the spectrum stretched down: the top bins are empty
    assert low.shape == spec.shape and (low[:, 128:] == 0).all() and (low[:, :128] > 0).all()
    assert apply("tempo[factor=2]", spec).shape == (50, 257)
    assert apply("tempo[factor=2]", spec, ctx=Context(RATE, 20, 70)).shape == (70, 257)  # >= transcript length
    assert apply("tempo[factor=0.5,max_time=1000]", spec).shape == (50, 257)  # 1 s = 50 frames at most
    assert np.allclose(apply("warp[wt=0,wf=0]", spec), spec, rtol=1e-6)
    assert not np.allclose(apply("warp[nt=4,wt=1]", spec), spec)


def test_imageops_equal_tensorflows_kernels():
    import tensorflow as tf

    from dsflow.imageops import dense_image_warp, resize_bicubic, resize_bilinear

    rng = np.random.default_rng(0)
    image = rng.uniform(0, 100, (37, 257)).astype(np.float32)
    for size in ((37, 300), (37, 200), (60, 257), (20, 257)):
        ref = tf.compat.v1.image.resize_bilinear(image[None, :, :, None], size).numpy()[0, :, :, 0]
        np.testing.assert_array_equal(resize_bilinear(image, *size), ref)
    flows = rng.normal(size=(6, 3, 2)).astype(np.float32)
    ref = tf.compat.v1.image.resize_bicubic(flows[None], (37, 257)).numpy()[0]
    np.testing.assert_array_equal(resize_bicubic(flows, 37, 257), ref)
    flow = rng.normal(0, 3, (37, 257, 2)).astype(np.float32)
    out = dense_image_warp(image, flow)
    for y, x in [(0, 0), (5, 100), (36, 256), (20, 3)]:  # dense_image_warp's definition, one pixel at a time
        qy, qx = y - flow[y, x, 0], x - flow[y, x, 1]
        fy, fx = min(max(0, math.floor(qy)), 35), min(max(0, math.floor(qx)), 255)
        ay, ax = min(max(qy - fy, 0), 1), min(max(qx - fx, 0), 1)
        top = image[fy, fx] + ax * (image[fy, fx + 1] - image[fy, fx])
        bottom = image[fy + 1, fx] + ax * (image[fy + 1, fx + 1] - image[fy + 1, fx])
        assert out[y, x] == pytest.approx(top + ay * (bottom - top), rel=1e-5)


def test_dropout_add_multiply_statistics():
    x = np.ones((400, 257), np.float32)
    assert (apply("dropout[rate=0.25]", x) == 0).mean() == pytest.approx(0.25, abs=0.01)  # as documented
    assert np.std(apply("add[stddev=2]", x) - x) == pytest.approx(2, rel=0.02)
    out = apply("multiply[stddev=0.5]", x)
    assert np.mean(out) == pytest.approx(1, abs=0.01) and np.std(out) == pytest.approx(0.5, rel=0.02)


ALL = ["overlay[p={p},source={noise},snr=10:20~5]", "reverb[p={p},delay=50~30,decay=10:2~1]",
       "resample[p={p},rate=12000:8000~4000]", "codec[p={p},bitrate=48000:16000]", "volume[p={p},dbfs=-10:-40]",
       "pitch[p={p},pitch=1~0.2]", "tempo[p={p},factor=1~0.5]", "warp[p={p},nt=4,nf=1,wt=0.5:1,wf=0.1:0.2]",
       "frequency_mask[p={p},n=1:3,size=1:5]", "time_mask[p={p},domain=signal,n=3:10~2,size=50:100~40]",
       "dropout[p={p},rate=0.05]", "add[p={p},domain=signal,stddev=0~0.5]",
       "multiply[p={p},domain=features,stddev=0~0.5]"]


def test_p0_is_identity_and_seeds_decide_everything(corpus, ldc):
    clip = ldc[:30000]
    never = parse([s.format(p=0, noise=corpus / "noise.csv") for s in ALL])
    np.testing.assert_array_equal(augmented.clip_features(clip, never, 1, 0, 0, 0.0, CTX, 32, 20), mfcc(clip, RATE))
    always = parse([s.format(p=1, noise=corpus / "noise.csv") for s in ALL])
    a = augmented.clip_features(clip, always, 1, 2, 5, 0.3, CTX, 32, 20)
    np.testing.assert_array_equal(a, augmented.clip_features(clip, always, 1, 2, 5, 0.3, CTX, 32, 20))
    for other in ((2, 2, 5), (1, 3, 5), (1, 2, 6)):  # another seed, epoch, clip
        b = augmented.clip_features(clip, always, *other, 0.3, CTX, 32, 20)
        assert a.shape != b.shape or not np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------- the batches

def as_numpy(ds):
    return [{k: v.numpy() for k, v in batch.items()} for batch in ds]


def assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def test_without_augmentation_the_batches_are_dataset_loads(corpus):
    from dsflow import dataset
    from dsflow.augmented import AugmentedSplit

    want = as_numpy(dataset.load(corpus / "features", ALPHABET, 3, train=True))
    assert len(want) == 6  # 20 clips: the last partial batch dropped
    with AugmentedSplit(corpus / "features", ALPHABET, 3, [], workers=0) as split:
        assert split.cached  # no augmentation reads the cached features: the same as today
        assert_same(list(split.batches(0)), want)
    with AugmentedSplit(corpus / "features", ALPHABET, 3, ["volume[p=0]"], workers=1) as split:
        assert not split.cached  # audio read and features computed in a worker process
        assert_same(list(split.batches(4)), want)
        spec = dataset.load(corpus / "features", ALPHABET, 3, True).element_spec
        for key, tensor in next(split.tensors(0)).items():
            assert spec[key].is_compatible_with(tensor), key


def test_batches_are_reproducible_by_seed_epoch_and_clip(corpus):
    from dsflow.augmented import AugmentedSplit

    specs = [s.format(p=0.5, noise=corpus / "noise.csv") for s in ALL]
    with AugmentedSplit(corpus / "features", ALPHABET, 4, specs, random_seed=7, epochs=3, workers=0) as split:
        epoch1 = list(split.batches(1))
        assert_same(list(split.batches(1, start=2)), epoch1[2:])  # a resumed epoch repeats its examples
        assert_same(as_numpy(split.tensors(1, 3)), epoch1[3:])
        epoch2 = list(split.batches(2))
    assert any(a["features"].shape != b["features"].shape or not np.array_equal(a["features"], b["features"])
               for a, b in zip(epoch1, epoch2))
    assert all(np.array_equal(a["labels"], b["labels"]) for a, b in zip(epoch1, epoch2))
    with AugmentedSplit(corpus / "features", ALPHABET, 4, specs, random_seed=7, epochs=3, workers=1) as split:
        assert_same(list(split.batches(1)), epoch1)  # the same from a worker process
    with AugmentedSplit(corpus / "features", ALPHABET, 4, specs, random_seed=8, epochs=3, workers=0) as split:
        assert not all(np.array_equal(a["features"], b["features"]) for a, b in zip(split.batches(1), epoch1))


def test_clips_whose_length_changed_are_regrouped_within_their_window(corpus):
    from dsflow import dataset
    from dsflow.augmented import AugmentedSplit

    frames = dict(zip(*(dataset.info(corpus / "features")[c] for c in ("wav_filename", "n_frames"))))
    names = list(frames)

    def epoch1(regroup):
        with AugmentedSplit(corpus / "features", ALPHABET, 2, ["tempo[p=0.3,factor=1~0.5]"], epochs=2, workers=0,
                            regroup=regroup) as split:
            batches = list(split.batches(1))
            assert_same(list(split.batches(1, start=3)), batches[3:])  # resumed inside a window
        clips = {n.decode(): f[:k] for b in batches for n, f, k in zip(b["wav_filename"], b["features"],
                                                                        b["feature_lengths"])}
        return batches, clips

    plain, plain_clips = epoch1(1)  # DeepSpeech's batches: padded to a slowed clip
    assert list(plain_clips) == names
    assert any(len(f) != frames[n] for n, f in plain_clips.items())  # tempo changed lengths
    batches, clips = epoch1(4)
    order = list(clips)
    assert order != names
    for w in range(0, 20, 8):  # a window's clips stay in it, sorted by their new length (stable)
        window = order[w:w + 8]
        assert sorted(window) == sorted(names[w:w + 8])
        assert window == sorted(window, key=lambda n: (len(clips[n]), names.index(n)))
    assert all(np.array_equal(clips[n], plain_clips[n]) for n in names)  # the same augmented clips
    assert sum(b["features"].shape[1] for b in batches) < sum(b["features"].shape[1] for b in plain)


def test_feature_only_augmentations_on_the_cache_equal_the_full_pipeline(corpus):
    from dsflow.augmented import AugmentedSplit

    specs = ["add[p=0.5,stddev=0~0.5]", "multiply[stddev=0.2]", "time_mask[p=0.7,domain=features,n=2,size=60]",
             "dropout[domain=features,rate=0.1]"]
    with AugmentedSplit(corpus / "features", ALPHABET, 4, specs, epochs=2, workers=0) as split:
        assert split.cached
        cached = list(split.batches(1))
    with AugmentedSplit(corpus / "features", ALPHABET, 4, specs + ["volume[p=0]"], epochs=2, workers=0) as split:
        assert not split.cached
        assert_same(list(split.batches(1)), cached)


def test_a_training_step_consumes_the_augmented_dataset(corpus):
    import tensorflow as tf

    from dsflow import model
    from dsflow.augmented import AugmentedSplit
    from dsflow.model import step_functions

    net = model.DeepSpeech(16, 29)
    opt = model.adam(1e-3)
    opt.build(net.trainable_variables)
    gradients, apply_grads, _ = step_functions(net, opt, model.dropout_rates(0.05), tf.float32)
    specs = [s.format(p=0.5, noise=corpus / "noise.csv") for s in ALL]
    with AugmentedSplit(corpus / "features", ALPHABET, 4, specs, epochs=1, workers=0) as split:
        for step, batch in enumerate(split.tensors(0)):
            losses, grads = gradients(batch["features"], batch["feature_lengths"], batch["labels"],
                                      batch["label_lengths"], tf.constant([1, step], tf.int64))
            apply_grads(grads)
            assert np.isfinite(losses.numpy()).all()
    assert step == 4
