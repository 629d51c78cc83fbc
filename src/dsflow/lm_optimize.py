"""`dsflow lm-optimize`: DeepSpeech 0.9.3's lm_optimizer.py, the search for the scorer's lm_alpha and lm_beta.

Owns its result file (`--output`, JSON). As lm_optimizer.py did: an Optuna study (TPE sampler, Optuna's default
median pruner), each trial drawing lm_alpha uniformly from [0, lm_alpha_max] and lm_beta from [0, lm_beta_max],
decoding every test set with DeepSpeech's beam search and that pair, reporting each set's WER as an
intermediate value (a trial that the pruner stops is marked pruned), and minimizing the corpus WER of all sets
together (DeepSpeech's wer_cer_batch: summed word distances over summed reference words, capped at 1). The
workflow passes the dev split; tuning on the test set would flatter the test report.

Differences, for speed and repeatability: the acoustic model runs once over the sets (lm_optimizer re-ran
DeepSpeech's evaluate, network included, in every trial); its probabilities are kept in a temporary file that
`--threads` decoder processes map, each holding the scorer loaded once, and a trial only sends them the pair.
The sampler is seeded with `--random_seed` (lm_optimizer's study was not seeded), and the first trial is the
scorer's own pair (a package's defaults, else DeepSpeech's), so the result is never worse on the dev set than
what the scorer had. With a bytes output mode (UTF-8) scorer, which a bytes_output_mode model needs, the CER is
minimized instead (and reported per set), as lm_optimizer.py did for a character-based scorer.

The result: {"lm_alpha", "lm_beta", "wer", "cer", "objective" ("wer" or "cer"), "best_trial", ...the search's
settings..., "trials": [...]};
`--output_scorer` also writes a copy of a .scorer package with that pair as its default alpha/beta (`dsflow
scorer-set-defaults --from_json` does it later).
"""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from dsflow import UserError, flags, gpu
from dsflow.atomic import write_text
from dsflow.decode import Decoder
from dsflow.log import Progress, log


def add_parser(sub) -> None:
    p = sub.add_parser("lm-optimize", help="search the scorer's lm_alpha/lm_beta on a dev set (DeepSpeech's "
                                           "lm_optimizer.py, Optuna)", description=__doc__)
    a = p.add_argument
    a("--checkpoint_dir", required=True, help="a checkpoint folder published by `dsflow train`")
    a("--test_features", required=True, help="comma-separated features folders to tune on (the dev split)")
    a("--scorer_path", required=True, help="the scorer to tune: a .scorer package or a KenLM model")
    a("--output", required=True, help="write the best pair and every trial here (JSON)")
    a("--output_scorer", help="also write the .scorer package with the best pair as its defaults here")
    flags.add_options(p, "lm-optimize")
    a("--threads", type=int, default=0, help="TensorFlow intra-op threads and decoder processes (0: TensorFlow's "
                                               "default, one decoder process)")
    p.set_defaults(func=_main)


# ---------------------------------------------------------------------------------------------- decoding pool

_worker: dict = {}


def _init_worker(alphabet, decoder_args, probs_path, offsets) -> None:
    _worker["decoder"] = Decoder(alphabet, **decoder_args)
    _worker["probs"] = np.load(probs_path, mmap_mode="r")
    _worker["offsets"] = offsets


def _decode_range(task) -> list[str]:
    alpha, beta, start, stop = task
    decoder, probs, offsets = _worker["decoder"], _worker["probs"], _worker["offsets"]
    decoder.set_alpha_beta(alpha, beta)
    return [decoder.decode(np.asarray(probs[offsets[i]:offsets[i + 1]])) for i in range(start, stop)]


class Trials:
    """The cached probabilities of some utterances and a pool of decoder processes over them."""

    def __init__(self, decoder: Decoder, probs: list[np.ndarray], workdir: Path, threads: int):
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in probs])]).tolist()
        path = workdir / "probs.npy"
        np.save(path, np.concatenate(probs) if probs else np.zeros((0, decoder.alphabet.blank_index + 1)))
        self.threads = max(1, min(threads, len(probs)))
        # Processes, not threads: the C++ search holds the GIL. "spawn": this process runs TensorFlow.
        self.pool = ProcessPoolExecutor(self.threads, mp_context=get_context("spawn"), initializer=_init_worker,
                                        initargs=(decoder.alphabet, decoder.args,
                                                  str(path), self.offsets))

    def decode(self, alpha: float, beta: float, start: int, stop: int) -> list[str]:
        """Utterances start..stop-1 decoded with (alpha, beta), in order; the frames split evenly over tasks."""
        frames = np.array(self.offsets[start:stop + 1]) - self.offsets[start]
        pieces = min(stop - start, self.threads * 4)
        cuts = np.searchsorted(frames, np.linspace(0, frames[-1], pieces + 1)[1:-1]) + start
        bounds = [start, *sorted(set(cuts.tolist()) - {start, stop}), stop]
        tasks = [(alpha, beta, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        return [text for texts in self.pool.map(_decode_range, tasks) for text in texts]

    def close(self) -> None:
        self.pool.shutdown()


# ---------------------------------------------------------------------------------------------- the search

def optimize(trials: Trials, sets: list[list[tuple]], n_trials: int, alpha_max: float, beta_max: float, seed: int,
             start: tuple[float, float] | None = None,
             objective: str = "wer") -> "optuna.Study":  # noqa: F821
    """lm_optimizer.py's study over `sets` (per set, [(wav_filename, transcript)] in cache order) minimizing
    `objective` ("wer", or "cer" for a bytes-mode scorer); `start`, a pair inside the bounds, is the first trial."""
    import optuna

    from dsflow.wer import corpus_rates, sample_result

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines below say what each trial did
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    if start and 0 <= start[0] <= alpha_max and 0 <= start[1] <= beta_max:
        study.enqueue_trial({"lm_alpha": start[0], "lm_beta": start[1]})
    bounds = np.cumsum([0] + [len(s) for s in sets]).tolist()

    which = ("wer", "cer").index(objective)

    def minimized(trial) -> float:
        alpha = trial.suggest_float("lm_alpha", 0, alpha_max)
        beta = trial.suggest_float("lm_beta", 0, beta_max)
        samples = []
        for step, rows in enumerate(sets):
            texts = trials.decode(alpha, beta, bounds[step], bounds[step + 1])
            current = [sample_result(name, src, res, 0.0) for (name, src), res in zip(rows, texts)]
            samples += current
            trial.report(corpus_rates(current)[which], step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        wer, cer = corpus_rates(samples)
        trial.set_user_attr("wer", wer)
        trial.set_user_attr("cer", cer)
        return (wer, cer)[which]

    with Progress("lm-optimize", n_trials, "trials", interval=30.0) as progress:
        def done(study, trial) -> None:
            progress.update()
            value = trial.value if trial.value is not None else trial.intermediate_values.get(
                max(trial.intermediate_values, default=0))
            best = study.best_trial if any(t.state.name == "COMPLETE" for t in study.trials) else None
            log.info("trial %d/%d: lm_alpha %.4f, lm_beta %.4f: %s %s%s; best %s (trial %d)", trial.number + 1,
                     n_trials, trial.params["lm_alpha"], trial.params["lm_beta"], objective.upper(),
                     "?" if value is None else f"{value:.4f}", "" if trial.state.name == "COMPLETE" else " (pruned)",
                     f"{best.value:.4f}" if best else "-", best.number + 1 if best else 0)

        study.optimize(minimized, n_trials=n_trials, n_jobs=1, callbacks=[done])
    return study


def result(study, args, checkpoint: str, objective: str = "wer") -> dict:
    best = study.best_trial
    return {
        "lm_alpha": best.params["lm_alpha"], "lm_beta": best.params["lm_beta"], "wer": best.user_attrs["wer"],
        "cer": best.user_attrs["cer"], "objective": objective, "best_trial": best.number + 1,
        "n_trials": len(study.trials), "lm_alpha_max": args.lm_alpha_max, "lm_beta_max": args.lm_beta_max,
        "random_seed": args.random_seed, "scorer_path": args.scorer_path, "checkpoint": checkpoint,
        "test_features": [d.strip() for d in args.test_features.split(",") if d.strip()],
        "decoder": {k: getattr(args, k) for k in ("beam_width", "cutoff_prob", "cutoff_top_n", "beam_threshold")},
        "trials": [{"number": t.number + 1, "lm_alpha": t.params["lm_alpha"], "lm_beta": t.params["lm_beta"],
                    "wer": t.user_attrs.get("wer"), "cer": t.user_attrs.get("cer"), "state": t.state.name.lower()}
                   for t in study.trials],
    }


def _main(args) -> int:
    from dsflow import checkpoints, scorer
    from dsflow.inference import acoustic, make_step

    dirs = [d.strip() for d in args.test_features.split(",") if d.strip()]
    if not dirs:
        raise UserError("--test_features: no features folder given")
    if args.n_trials < 1 or args.lm_alpha_max < 0 or args.lm_beta_max < 0 or args.test_batch_size < 1:
        raise UserError("lm-optimize: --n_trials and --test_batch_size must be >= 1, --lm_alpha_max and "
                        "--lm_beta_max >= 0")
    gpu.init_tensorflow(args.threads)
    net = checkpoints.load_model(args.checkpoint_dir, args.load_evaluate, args.alphabet_config_path,
                                 args.bytes_output_mode)
    decoder = Decoder(net.alphabet, args.beam_width, args.scorer_path, None, None, args.cutoff_prob,
                      args.cutoff_top_n, args.beam_threshold)  # the scorer checked before the network runs
    if args.output_scorer and scorer.load(args.scorer_path, net.alphabet).kind != "package":
        raise UserError(f"--output_scorer: {args.scorer_path} is not a .scorer package; build one with "
                        "`dsflow build-lm --package` or `dsflow scorer-package`")
    objective = "cer" if net.alphabet.bytes_output_mode else "wer"  # lm_optimizer.py: CER for a UTF-8 scorer
    step = make_step(net)
    sets, probs = [], []
    for d in dirs:
        rows, set_probs = acoustic(net, d, args.test_batch_size, step)
        sets.append([(name, src) for name, src, _loss in rows])
        probs += set_probs
    log.info("acoustic model: %d utterances, %d frames, cached; %d trials of beam search (beam_width %d, scorer "
             "%s) in %d processes", len(probs), sum(map(len, probs)), args.n_trials, args.beam_width,
             args.scorer_path, max(1, min(args.threads, len(probs))))
    out_dir = Path(args.output).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lm-optimize-", dir=out_dir) as tmp:
        trials = Trials(decoder, probs, Path(tmp), max(1, args.threads))
        try:
            study = optimize(trials, sets, args.n_trials, args.lm_alpha_max, args.lm_beta_max, args.random_seed,
                             (decoder.lm_alpha, decoder.lm_beta), objective)
        finally:
            trials.close()
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        raise UserError("lm-optimize: every trial was pruned; run more trials")
    best = result(study, args, net.checkpoint, objective)
    write_text(args.output, json.dumps(best, indent=2) + "\n")
    print("Best params: lm_alpha={} and lm_beta={} with {}={}".format(best["lm_alpha"], best["lm_beta"],
                                                                       objective.upper(), best[objective]), flush=True)
    log.info("wrote %s", args.output)
    if args.output_scorer:
        scorer.set_defaults(args.scorer_path, best["lm_alpha"], best["lm_beta"], args.output_scorer)
        log.info("wrote %s with default lm_alpha %r, lm_beta %r", args.output_scorer, best["lm_alpha"],
                 best["lm_beta"])
    return 0
