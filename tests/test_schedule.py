import math
import random

import pytest

from dsflow.schedule import Schedule

INF, NAN = math.inf, math.nan


def deepspeech(dev_losses, early_stop, es_epochs, es_min_delta, reduce_lr_on_plateau, plateau_epochs):
    """DeepSpeech 0.9.3 train.py's validation tail, transcribed (events instead of session calls)."""
    best_dev_loss = float("inf")
    epochs_without_improvement = 0
    events = []
    for dev_loss in dev_losses:
        e = []
        if dev_loss > best_dev_loss - es_min_delta:
            epochs_without_improvement += 1
        else:
            epochs_without_improvement = 0
        if dev_loss < best_dev_loss:
            best_dev_loss = dev_loss
            e.append("save")
        if early_stop and epochs_without_improvement == es_epochs:
            e.append("stop")
            events.append(e)
            break
        if (reduce_lr_on_plateau and epochs_without_improvement > 0
                and epochs_without_improvement % plateau_epochs == 0):
            e.append("plateau")
        events.append(e)
    return events


def ours(dev_losses, **kw):
    s = Schedule(**kw)
    events = []
    for loss in dev_losses:
        d = s.update(loss)
        events.append([name for name, on in (("save", d.save_best), ("stop", d.stop), ("plateau", d.reduce_lr)) if on])
        if d.stop:
            break
    return events, s


FLAGS = dict(early_stop=True, es_epochs=3, es_min_delta=0.25, reduce_lr_on_plateau=True, plateau_epochs=2)


def test_first_epoch_always_saves_best():
    events, s = ours([100.0], **FLAGS)
    assert events == [["save"]] and s.best_dev_loss == 100.0 and s.epochs_without_improvement == 0


def test_improvement_below_min_delta_counts_as_none_but_still_saves_best():
    events, s = ours([10.0, 9.9, 9.8], **FLAGS)
    assert events == [["save"], ["save"], ["save", "plateau"]]
    assert s.epochs_without_improvement == 2 and s.best_dev_loss == 9.8


def test_improvement_of_exactly_min_delta_resets_the_counter():
    events, s = ours([1.0, 2.0, 0.75], **FLAGS)  # 0.75 > 1.0 - 0.25 is False
    assert events == [["save"], [], ["save"]] and s.epochs_without_improvement == 0


def test_early_stop_when_counter_equals_es_epochs_and_before_plateau():
    # plateau_epochs 3 = es_epochs: both would fire at counter 3; DeepSpeech breaks before the plateau.
    events, s = ours([5.0, 6.0, 6.0, 6.0, 1.0], **{**FLAGS, "plateau_epochs": 3})
    assert events == [["save"], [], [], ["stop"]] and s.epochs_without_improvement == 3


def test_plateau_repeats_every_plateau_epochs_without_resetting_the_counter():
    events, s = ours([5.0] + [6.0] * 6, **{**FLAGS, "early_stop": False})
    assert [("plateau" in e) for e in events] == [False, False, True, False, True, False, True]
    assert s.epochs_without_improvement == 6


def test_nan_and_inf_dev_losses_follow_python_comparisons():
    # NaN: never "worse" (NaN > x is False) so the counter resets; never "better" so nothing is saved.
    events, s = ours([5.0, 6.0, NAN], **FLAGS)
    assert events == [["save"], [], []] and s.epochs_without_improvement == 0 and s.best_dev_loss == 5.0
    # +inf before any finite loss: inf > inf - delta is False (reset), inf < inf is False (no save).
    events, s = ours([INF, INF], **FLAGS)
    assert events == [[], []] and s.best_dev_loss == INF and s.epochs_without_improvement == 0
    events, s = ours([5.0, INF], **FLAGS)
    assert events == [["save"], []] and s.epochs_without_improvement == 1


def test_es_epochs_zero_stops_at_the_first_improving_epoch_as_deepspeech_does():
    events, _ = ours([5.0, 4.0], **{**FLAGS, "es_epochs": 0})
    assert events == [["save", "stop"]]


def test_disabled_flags_never_stop_or_reduce():
    events, _ = ours([1.0] + [2.0] * 30, early_stop=False, reduce_lr_on_plateau=False)
    assert all(e == [] for e in events[1:]) and len(events) == 31


def test_plateau_epochs_zero_is_refused():
    with pytest.raises(ValueError, match="plateau_epochs"):
        Schedule(reduce_lr_on_plateau=True, plateau_epochs=0)


def test_matches_deepspeech_on_random_sequences():
    rng = random.Random(7)
    for _ in range(500):
        flags = dict(early_stop=rng.random() < 0.7, es_epochs=rng.randint(0, 5),
                     es_min_delta=rng.choice([0, 0.05, 0.5]), reduce_lr_on_plateau=rng.random() < 0.7,
                     plateau_epochs=rng.randint(1, 4))
        losses, level = [], 10.0
        for _ in range(rng.randint(1, 25)):
            level += rng.choice([-1.0, -0.3, -0.04, 0.0, 0.02, 0.5])
            losses.append(rng.choice([NAN, INF]) if rng.random() < 0.05 else level)
        assert ours(losses, **flags)[0] == deepspeech(losses, **flags), (losses, flags)
