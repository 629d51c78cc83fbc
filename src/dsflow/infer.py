"""`dsflow infer`: DeepSpeech's --one_shot_infer. Transcribe audio files with a trained checkpoint folder (dsflow's
or DeepSpeech's), without exporting: the whole utterance through the network at once (DeepSpeech's n_steps -1
graph), then greedy decoding or the beam search with a scorer. Audio of another rate or channel count is converted
with sox first. The features are the training features (samples / 32767; DeepSpeech's one_shot_infer read WAVs
with TF's decode_wav, / 32768).
"""

from __future__ import annotations

from pathlib import Path

from dsflow import UserError, flags, gpu
from dsflow.log import log


def add_parser(sub) -> None:
    p = sub.add_parser("infer", help="transcribe audio with a checkpoint folder, no export (DeepSpeech's "
                                     "--one_shot_infer)", description=__doc__)
    p.add_argument("audio", nargs="+", help="audio files of any rate / channel count / format that sox reads")
    p.add_argument("--checkpoint_dir", required=True, help="a checkpoint folder: dsflow's or DeepSpeech's")
    for key in ("load_evaluate", "alphabet_config_path", "scorer_path", "beam_width", "lm_alpha", "lm_beta",
                "audio_sample_rate", "feature_win_len", "feature_win_step"):
        flags.add_option(p, key)
    p.set_defaults(func=_main)


def infer(args) -> list[str]:
    import numpy as np

    from dsflow import checkpoints
    from dsflow.audio import model_rate_wav, read_pcm16
    from dsflow.decode import Decoder
    from dsflow.mfcc import mfcc

    missing = [p for p in args.audio if not Path(p).is_file()]
    if missing:
        raise UserError(f"no such audio file: {', '.join(missing)}")
    net = checkpoints.load_model(args.checkpoint_dir, args.load_evaluate, args.alphabet_config_path)
    meta = checkpoints.features_meta(args.checkpoint_dir) or {  # a DeepSpeech checkpoint: the configured features
        "sample_rate": args.audio_sample_rate, "win_len_ms": args.feature_win_len, "win_step_ms": args.feature_win_step}
    rate = int(meta["sample_rate"])
    decoder = Decoder(net.alphabet, args.beam_width, args.scorer_path, args.lm_alpha, args.lm_beta)
    texts = []
    for path in args.audio:
        with model_rate_wav(path, rate) as wav:
            samples = read_pcm16(str(wav), str(path), rate)
        features = mfcc(samples, rate, meta["win_len_ms"], meta["win_step_ms"])
        logits = net(features[None]).numpy()[:, 0]
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        texts.append(decoder.decode(e / e.sum(axis=-1, keepdims=True)))
        log.info("%s: %s", path, texts[-1])
    return texts


def _main(args) -> int:
    gpu.init_tensorflow(0)
    for path, text in zip(args.audio, infer(args)):
        print(f"{path}\t{text}" if len(args.audio) > 1 else text, flush=True)
    return 0
