"""`dsflow transcribe`: speech to text with a model written by `dsflow export`, streamed like DeepSpeech's client.

The audio goes through the exported model the way DeepSpeech's native client (StreamingState) feeds it:
  - audio of another rate, channel count or sample format is first converted with sox (as DeepSpeech's
    client.py did for the 44.1 kHz stereo smoke-test file) to 16-bit mono at the model's sample rate;
  - the audio is read in blocks, and the MFCCs of each block's 32 ms windows (stride 20 ms) are computed by
    `dsflow.mfcc.mfcc`, the arithmetic of the model's `mfcc` signature (DeepSpeech's AudioSpectrogram + Mfcc
    ops, which the native client ran once per window), a block at a time;
  - the MFCC buffer starts with 9 zero frames, each 19 frames make one context window, and every n_steps
    windows make one call of the acoustic model (the SavedModel's `acoustic` signature; in the TFLite file,
    DeepSpeech's interface, the tensors input_node, previous_state_c/h -> logits, new_state_c/h), with the
    LSTM state carried from call to call;
  - at the end of the audio 9 zero frames are pushed, and the last partial chunk is padded with zero windows
    (only its real time steps are kept).
So a long file never goes into one graph call, and memory does not grow with its length beyond the output
probabilities. The probabilities are decoded greedily, or with `--scorer` (a .scorer package or a KenLM model)
by DeepSpeech's CTC beam search (`dsflow.decode.Decoder`; the beam width defaults to the model's
`export_beam_width` as DeepSpeech's client used the metadata's, lm_alpha/lm_beta to the package's defaults).

Differences from DeepSpeech's native client: samples are scaled by 1/32767 like the training features (the
client used 1/32768), and the client's last, partial audio window (samples left over after the last full
window, topped up with stale samples) is not turned into an extra frame; so the features equal the training
features exactly and the transcripts equal those of the checkpoint.

Any .tflite file with DeepSpeech's interface is read, also one exported by DeepSpeech 0.9.x or Coqui STT
(dsflow.tflite.Model); its metadata (sample rate, windows, alphabet, beam width) drives the client. A `.pb` or
`.pbmm` given as a file is run by TensorFlow 2 (dsflow.pbgraph.Graph; dsflow's own, with export_tflite false).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dsflow import UserError
from dsflow.audio import model_rate_wav
from dsflow.exported import ExportedModel
from dsflow.log import log
from dsflow.mfcc import N_INPUT, mfcc
from dsflow.model import N_CONTEXT

BLOCK_SECONDS = 10  # audio read per block


def add_parser(sub) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files with an exported model (TFLite by default)",
                       description=__doc__)
    a = p.add_argument
    a("model", help="an export folder (written by `dsflow export`), a .tflite file (also one exported by "
                    "DeepSpeech 0.9.x or Coqui STT), an exported .pb/.pbmm file or a SavedModel folder")
    a("audio", nargs="+", help="audio files of any rate / channel count / format that sox reads")
    a("--savedmodel", action="store_true", help="use the export's TF SavedModel instead of its TFLite model")
    a("--threads", type=int, default=1, help="inference threads (default 1)")
    a("--scorer", default="", help="a .scorer package or a KenLM model (ARPA, or binary with its .words), e.g. "
                                   "`dsflow build-lm` output: beam search with it; without: greedy decoding")
    a("--beam_width", type=int, default=0, help="beam width with --scorer (default: the model's export_beam_width)")
    a("--lm_alpha", type=float, help="LM weight (default: the .scorer package's, else DeepSpeech's)")
    a("--lm_beta", type=float, help="word insertion bonus (default: the .scorer package's, else DeepSpeech's)")
    p.set_defaults(func=_main)


# ---------------------------------------------------------------------------------------------- streaming

class Stream:
    """DeepSpeech's StreamingState: feed int16 samples, then `finish()` -> probabilities [T, n_classes]."""

    def __init__(self, model):
        self.model = model
        self.audio = np.zeros(0, np.int16)
        self.frames = [np.zeros(N_INPUT, np.float32)] * N_CONTEXT  # the native client's 9 leading zero frames
        self.windows: list[np.ndarray] = []
        self.c = np.zeros([1, model.n_hidden], np.float32)
        self.h = np.zeros([1, model.n_hidden], np.float32)
        self.probs: list[np.ndarray] = []

    def feed(self, samples: np.ndarray) -> None:
        audio = np.concatenate([self.audio, np.asarray(samples, np.int16)])
        # the MFCCs of every whole window in the buffer (none if it is shorter than one): dsflow.mfcc.mfcc is
        # the arithmetic of the model's `mfcc` signature (DeepSpeech's ops; tests/test_transcribe.py checks it), on
        # a block at a time instead of a graph call per 20 ms; /32767 in float32 like the training features
        frames = mfcc(audio, self.model.sample_rate, self.model.win_len, self.model.win_step)
        for frame in frames:
            self._push_frame(frame)
        self.audio = audio[len(frames) * self.model.stride:]

    def _push_frame(self, frame: np.ndarray) -> None:
        self.frames.append(frame)
        if len(self.frames) == 2 * N_CONTEXT + 1:
            self.windows.append(np.stack(self.frames))
            self.frames.pop(0)
            if len(self.windows) == self.model.n_steps:
                self._run_chunk()

    def _run_chunk(self) -> None:
        n = len(self.windows)
        batch = np.zeros([1, self.model.n_steps, 2 * N_CONTEXT + 1, N_INPUT], np.float32)  # zero windows pad the tail
        batch[0, :n] = self.windows
        out = self.model.run("acoustic", input_node=batch, previous_state_c=self.c, previous_state_h=self.h)
        self.c, self.h = out["new_state_c"], out["new_state_h"]
        self.probs.append(out["logits"][:n])
        self.windows = []

    def finish(self) -> np.ndarray:
        for _ in range(N_CONTEXT):  # the native client's 9 trailing zero frames
            self._push_frame(np.zeros(N_INPUT, np.float32))
        if self.windows:
            self._run_chunk()
        return np.concatenate(self.probs) if self.probs else np.zeros([0, self.model.n_classes], np.float32)


# ---------------------------------------------------------------------------------------------- audio

def probabilities(model, audio_path: str | Path) -> tuple[np.ndarray, float]:
    """(probabilities [T, n_classes], audio seconds) of one audio file, streamed through the model."""
    import soundfile as sf

    stream = Stream(model)
    with model_rate_wav(audio_path, model.sample_rate) as wav:
        seconds = sf.info(str(wav)).duration
        for block in sf.blocks(str(wav), blocksize=BLOCK_SECONDS * model.sample_rate, dtype="int16"):
            stream.feed(block)
    return stream.finish(), seconds


def decode_probs(probs: np.ndarray, alphabet, decoder=None) -> str:
    """Greedy (best path), or the beam search of `decoder` (a dsflow.decode.Decoder with a scorer)."""
    from dsflow.decode import greedy

    return decoder.decode(probs) if decoder is not None else greedy(probs, len(probs), alphabet)


def transcribe(model, audio_path: str | Path, decoder=None) -> str:
    start = time.perf_counter()
    probs, seconds = probabilities(model, audio_path)
    text = decode_probs(probs, model.alphabet, decoder)
    took = time.perf_counter() - start
    log.info("%s: %.2f s of audio in %.2f s (real-time factor %.3f)", audio_path, seconds, took,
             took / seconds if seconds else 0.0)
    return text


def _main(args) -> int:
    if args.threads < 1:
        raise UserError("--threads must be >= 1")
    if args.savedmodel or str(args.model).endswith((".pb", ".pbmm")):  # TensorFlow runs the model
        import tensorflow as tf

        try:  # before any op runs
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        except RuntimeError:  # a process that already ran TensorFlow ops (tests)
            pass
    missing = [p for p in args.audio if not Path(p).is_file()]
    if missing:  # before the model loads (seconds for a large one)
        raise UserError(f"no such audio file: {', '.join(missing)}")
    model = ExportedModel(args.model, args.savedmodel, args.threads)
    log.info("%s: %s model, %d Hz, n_hidden %d, %d steps per call, language %r", model.path, model.kind,
             model.sample_rate, model.n_hidden, model.n_steps, model.language)
    decoder = None
    if args.scorer:
        from dsflow.decode import Decoder

        decoder = Decoder(model.alphabet, args.beam_width or model.beam_width, args.scorer, args.lm_alpha,
                          args.lm_beta)
        log.info("beam search: width %d, scorer %s, lm_alpha %g, lm_beta %g", decoder.beam_width, args.scorer,
                 decoder.lm_alpha, decoder.lm_beta)
    for path in args.audio:
        text = transcribe(model, path, decoder)
        print(f"{path}\t{text}" if len(args.audio) > 1 else text, flush=True)
    return 0
