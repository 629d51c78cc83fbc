"""What a WAV file's header says, and whether the file holds all the audio the header promises.

soundfile (libsndfile) reads the format, but it silently clamps the frame count of a truncated file;
the RIFF chunk walk below reads the sizes the header declares so that truncation can be reported.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import soundfile as sf

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
