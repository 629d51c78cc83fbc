"""The `augment` spec language of DeepSpeech 0.9.3 (`--augment`): text -> dsflow.augment objects, with one-line
errors naming the spec and the problem; the config layer calls `parse` before any job runs.

A spec is `name[key=value,...]` (or just `name`); a list of specs is applied to every
training clip in DeepSpeech's order: the sample-domain ones (on the audio as it is read) in their given order,
then the graph ones by domain, signal (audio), spectrogram, features (MFCCs), each in the given order.

  sample domain   overlay[source=noise.csv,snr=3,layers=1]  reverb[delay=20,decay=10]  resample[rate=8000]
                  codec[bitrate=3200]  volume[dbfs=3.0103]
  spectrogram     pitch[pitch=1.075~0.125]  tempo[factor=1.1,max_time=-1]  warp[nt=1,nf=1,wt=0.1,wf=0]
                  frequency_mask[n=3,size=2]
  any domain      time_mask[n=3,size=10,domain=spectrogram]  dropout[rate=0.05,domain=spectrogram]
                  add[stddev=5,domain=features]  multiply[stddev=5,domain=features]

Every one takes `p` (probability, default 1). Numeric values are DeepSpeech's ranges: `v`, `v~r` (uniform in
[v-r, v+r]), `a:b` (moves from a to b with the training clock, 0 at the first clip of the first epoch to 1 at the
end of the last) and `a:b~r`; an int range gives rounded values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from dsflow import UserError, augment

SPEC = re.compile(r"^(?P<name>[a-z_]+)(\[(?P<params>.*)\])?$")


# ---------------------------------------------------------------------------------------------- value ranges

@dataclass(frozen=True)
class ValueRange:
    """DeepSpeech's util/helpers.py ValueRange: start, end (with the clock) and radius r, all int or all float."""
    start: float
    end: float
    r: float

    @property
    def integer(self) -> bool:
        return isinstance(self.start, int)

    def bounds(self) -> tuple[float, float]:
        return min(self.start, self.end) - self.r, max(self.start, self.end) + self.r

    def pick(self, rng: np.random.Generator, clock: float):
        """pick_value_from_range: the clock-interpolated centre, uniform within +-r, rounded for ints."""
        clock = max(0.0, min(1.0, float(clock)))
        value = self.start + clock * (self.end - self.start)
        if self.r:
            value = rng.uniform(value - self.r, value + self.r)
        return round(value) if self.integer else float(value)


def value_range(text: str, kind: type) -> ValueRange:
    """get_value_range of `v`, `v~r`, `a:b`, `a:b~r` (ValueError on anything else)."""
    parts = text.split("~")
    if len(parts) > 2:
        raise ValueError("more than one '~'")
    r = kind(parts[1]) if len(parts) == 2 else kind(0)
    ends = parts[0].split(":")
    if len(ends) > 2:
        raise ValueError("more than one ':'")
    start = kind(ends[0])
    end = kind(ends[-1])
    if r < 0:
        raise ValueError("the radius after '~' must not be negative")
    return ValueRange(start, end, r)


# ---------------------------------------------------------------------------------------------- parsing

def _bad(spec: str, what: str) -> UserError:
    return UserError(f"augment {spec!r}: {what}")


def parse_one(spec: str, sample_rate: int = 16000, check_sources: bool = True) -> augment.Augmentation:
    """One spec -> its augmentation; UserError naming the spec and the problem."""
    if not isinstance(spec, str):
        raise UserError(f"augment: each entry must be a string like 'volume[p=0.1,dbfs=-10:-40]', got {spec!r}")
    match = SPEC.match(spec.strip())
    if not match:
        raise _bad(spec, "not of the form name[key=value,...]")
    cls = augment.AUGMENTATIONS.get(match.group("name"))
    if cls is None:
        raise _bad(spec, f"unknown augmentation {match.group('name')!r}; one of {', '.join(augment.AUGMENTATIONS)}")
    keys = {"p": (float, "1", (0, 1), "probability"), **cls.keys}
    given: dict[str, str] = {}
    params = match.group("params")
    for part in (params.split(",") if params and params.strip() else []):
        pair = [s.strip() for s in part.split("=")]
        if len(pair) != 2 or not pair[0]:
            raise _bad(spec, f"{part.strip()!r} is not key=value")
        if pair[0] not in keys:
            raise _bad(spec, f"unknown key {pair[0]!r}; {cls.name} takes {', '.join(keys)}")
        if pair[0] in given:
            raise _bad(spec, f"{pair[0]!r} given twice")
        given[pair[0]] = pair[1]
    values = {}
    for key, (kind, default, allowed, what) in keys.items():
        text = given.get(key, default)
        if text is None:
            raise _bad(spec, f"{key!r} is required ({what})")
        if kind is str:
            if isinstance(allowed, tuple) and text not in allowed:
                raise _bad(spec, f"{key}={text!r}: must be one of {', '.join(allowed)}")
            values[key] = text
            continue
        if key in ("p", "max_time"):
            try:
                values[key] = float(text)
            except ValueError:
                raise _bad(spec, f"{key}={text!r}: not a number") from None
            lo = hi = values[key]
        else:
            try:
                values[key] = value_range(text, kind)
            except ValueError as e:
                raise _bad(spec, f"{key}={text!r}: not a{'n int' if kind is int else ' float'} range "
                                 f"(v, v~r, a:b or a:b~r): {e}") from None
            lo, hi = values[key].bounds()
        if allowed and not (allowed[0] <= lo and hi <= allowed[1]):
            span = f"{lo:g}" if lo == hi else f"{lo:g} to {hi:g}"
            raise _bad(spec, f"{key}={text}: {what} takes values in [{allowed[0]:g}, {allowed[1]:g}], this "
                             f"range reaches {span}")
    aug = cls(spec, **values)  # a `domain` key sets the instance's domain
    if isinstance(aug, augment.Codec):
        if sample_rate not in augment.Codec.RATES:
            raise _bad(spec, f"Opus codes only {', '.join(map(str, augment.Codec.RATES))} Hz audio, not "
                             f"audio_sample_rate {sample_rate}")
        try:
            import opuslib  # noqa: F401  (loads the system's libopus)
        except Exception as e:  # opuslib raises a bare Exception when libopus is missing
            raise _bad(spec, f"needs libopus (apt-get install libopus0) and opuslib: {e}") from None
    if isinstance(aug, augment.Overlay) and check_sources:
        from dsflow.augmented import overlay_source

        try:
            overlay_source(aug.source, sample_rate, load=False)
        except UserError as e:
            raise _bad(spec, str(e)) from None
    return aug


def parse(specs, sample_rate: int = 16000, check_sources: bool = True) -> list[augment.Augmentation]:
    """The `augment` list (strings) -> augmentations in DeepSpeech's order of application (by domain, then as
    given). For the config layer: call it before any job runs; a bad spec raises UserError."""
    if specs is None or specs == "":
        return []
    if isinstance(specs, str):
        specs = [specs]
    parsed = [(i, parse_one(s, sample_rate, check_sources)) for i, s in enumerate(specs)]
    parsed.sort(key=lambda item: (augment.ORDER.index(item[1].domain), item[0]))
    for i, aug in parsed:
        aug.position = i  # seeds its random numbers: reordering other specs does not change them
    return [aug for _, aug in parsed]


def sources(specs) -> list[str]:
    """The overlay source CSVs the specs name (without checking them: `parse` does), for the workflow's inputs."""
    return [parse_one(s, check_sources=False).source for s in specs or []
            if s.strip().startswith("overlay") and isinstance(parse_one(s, check_sources=False), augment.Overlay)]
