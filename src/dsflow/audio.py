"""Audio files, the ground floor every stage stands on: what a WAV header says, reading 16-bit PCM, and
converting any audio to 16-bit mono PCM WAV with sox (or ffmpeg).

soundfile (libsndfile) reads the format, but it silently clamps the frame count of a truncated file;
the RIFF chunk walk below reads the sizes the header declares so that truncation can be reported.
"""

from __future__ import annotations

import contextlib
import struct
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from dsflow import UserError
from dsflow.atomic import atomic_path

PCM16 = "PCM_16"
WAV_FORMATS = ("WAV", "WAVEX", "RF64")  # soundfile's names of the WAV container's variants


@dataclass(frozen=True)
class WavInfo:
    sample_rate: int
    channels: int
    subtype: str  # soundfile's subtype: PCM_16, PCM_U8, PCM_24, FLOAT, ...
    frames: int  # frames actually present in the file
    declared_frames: int  # frames the header's data chunk declares

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    @property
    def truncated(self) -> bool:
        return self.frames < self.declared_frames


class NotWav(Exception):
    pass


def _declared_data_bytes(path: str) -> tuple[int, int]:
    """(declared size of the 'data' chunk, bytes per frame) from the RIFF header."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            raise NotWav("no RIFF/WAVE header")
        block_align = 0
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                raise NotWav("no 'data' chunk")
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(size + (size & 1))
                if len(fmt) < 16:
                    raise NotWav("'fmt ' chunk cut short")
                block_align = struct.unpack("<H", fmt[12:14])[0]
            elif cid == b"data":
                if not block_align:
                    raise NotWav("'data' chunk before 'fmt ' chunk")
                if head[:4] == b"RF64":  # sizes live in the ds64 chunk; trust libsndfile's count
                    return -1, block_align
                return size, block_align
            else:
                f.seek(size + (size & 1), 1)


def probe(path: str) -> WavInfo:
    """Read a WAV file's format. Raises NotWav with a reason when it is not a readable WAV."""
    try:
        declared, block_align = _declared_data_bytes(path)
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise NotWav(str(e).split(": ", 1)[-1]) from None
    if info.format not in WAV_FORMATS:
        raise NotWav(f"format {info.format}, not WAV")
    declared_frames = info.frames if declared < 0 else declared // block_align
    return WavInfo(info.samplerate, info.channels, info.subtype, info.frames, declared_frames)


def read_pcm16(path: str, where: str, sample_rate: int) -> np.ndarray:
    """A validated split's WAV as int16 samples.

    The stdlib `wave` reader first (2.6x faster than soundfile on short clips: no cffi calls); files it
    does not take (WAVE_FORMAT_EXTENSIBLE or RF64 headers, which validation accepts) or that are not 16-bit
    mono at `sample_rate` go through soundfile, which reads the former and names what is wrong with the latter.
    """
    try:
        with wave.open(path, "rb") as w:
            if w.getsampwidth() == 2 and w.getnchannels() == 1 and w.getframerate() == sample_rate:
                return np.frombuffer(w.readframes(w.getnframes()), "<i2")
    except (wave.Error, EOFError):
        pass
    try:
        with sf.SoundFile(path) as f:
            if f.format not in WAV_FORMATS or f.subtype != PCM16 or f.channels != 1 or f.samplerate != sample_rate:
                raise UserError(f"{where}: expected a 16-bit mono WAV at {sample_rate} Hz, got {f.format} "
                                f"{f.subtype}, {f.channels} channel(s), {f.samplerate} Hz; "
                                "validate/convert the split first")
            return f.read(dtype="int16")
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise UserError(f"{where}: cannot read the audio: {e}") from None


# ---------------------------------------------------------------------------------------------- conversion

CONVERTERS = ("sox", "ffmpeg")  # sox measured faster (bench/bench_import.py), so it is the default


class ConversionError(Exception):
    pass


def converter_command(tool: str, src: str | Path, dst: str | Path, rate: int) -> list[str]:
    """The command that decodes `src` to a 16-bit mono PCM WAV at `rate` Hz in `dst` (any name)."""
    if tool == "sox":  # -D: no dither, as pysox's Transformer (import_cv2) runs sox
        return ["sox", "-D", "-V1", str(src), "-t", "wav", "-r", str(rate), "-c", "1", "-b", "16",
                "-e", "signed-integer", str(dst)]
    if tool == "ffmpeg":
        return ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-map_metadata", "-1",
                "-fflags", "+bitexact", "-ac", "1", "-ar", str(rate), "-c:a", "pcm_s16le", "-f", "wav",
                str(dst)]
    raise ValueError(f"unknown converter {tool!r} (one of {CONVERTERS})")


def wav_frames(path: str | Path, rate: int) -> int | None:
    """Number of frames of a complete 16-bit mono PCM WAV at `rate` Hz; None if `path` is not one."""
    try:
        info = probe(str(path))
    except (NotWav, OSError):
        return None
    if info.subtype == PCM16 and info.channels == 1 and info.sample_rate == rate and not info.truncated:
        return info.frames
    return None


def convert(src: str | Path, wav: str | Path, rate: int = 16000, tool: str = "sox") -> int:
    """Convert one clip to `wav` atomically and return its number of frames.

    Raises ConversionError with the converter's message when the clip cannot be decoded.
    """
    with atomic_path(wav) as tmp:
        proc = subprocess.run(converter_command(tool, src, tmp, rate), capture_output=True)
        if proc.returncode != 0:
            message = " ".join(proc.stderr.decode("utf-8", "replace").split())
            raise ConversionError(f"{tool} exited with {proc.returncode}: {message or '(no message)'}")
        frames = wav_frames(tmp, rate)
        if frames is None:
            raise ConversionError(f"{tool} did not write a 16-bit mono {rate} Hz WAV")
        if frames == 0:
            raise ConversionError(f"{tool} decoded no audio samples")
    return frames


@contextlib.contextmanager
def model_rate_wav(path: str | Path, rate: int):
    """`path` itself when it is a 16-bit mono PCM WAV at `rate` Hz, else a temporary copy converted with sox."""
    from dsflow.log import log

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such audio file")
    if wav_frames(path, rate) is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="dsflow-audio-") as tmp:
        wav = Path(tmp) / "audio.wav"
        try:
            convert(path, wav, rate)
        except ConversionError as e:
            raise UserError(f"{path}: cannot convert to 16-bit mono {rate} Hz audio: {e}") from None
        except FileNotFoundError:
            raise UserError(f"{path} needs converting to {rate} Hz mono, but sox is not installed "
                            "(apt-get install sox)") from None
        log.info("%s: converted to 16-bit mono %d Hz with sox", path, rate)
        yield wav
