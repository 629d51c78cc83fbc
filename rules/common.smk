# Every global of the workflow, the input functions, and the list of final outputs (final_outputs()).
import os

import dsflow.augspec as dsaugspec
import dsflow.config as dscfg
import dsflow.deps as dsdeps
import dsflow.distribute as dsdist
import dsflow.fingerprint as dsfp
import dsflow.flags as dsflags
from snakemake.exceptions import WorkflowError

# Your keys, the demo's tuning (for the demo only) or DeepSpeech's defaults; one line per problem, before any job.
_problems = dscfg.resolve(config)
if _problems:
    raise WorkflowError(
        "the configuration has problems (config/config.yaml, --configfile or --config):\n  - "
        + "\n  - ".join(_problems)
    )

CV_DIR = config["common_voice_dir"]
SPLITS = [s for s in dscfg.SPLITS if CV_DIR or dsflags.file_list(config[f"{s}_files"])]
SPLITS += (
    ["metrics"] if config["metrics_files"] else []
)  # DeepSpeech's metrics_files: loss reported each epoch
LOGS = "results/logs"
# How much the jobs log and show: an environment, not params, so that it re-runs nothing (dsflow.log).
os.environ.update(
    DSFLOW_LOG_LEVEL=str(config["log_level"]),
    DSFLOW_PROGRESS="1" if config["show_progressbar"] else "0",
)
TRAIN = "train" in SPLITS
# Where training publishes its checkpoint folder; without training, the model to evaluate and export (DeepSpeech:
# checkpoint_dir is the shorthand for save_checkpoint_dir and load_checkpoint_dir).
CHECKPOINT_DIR = (
    config["save_checkpoint_dir"] or config["checkpoint_dir"] or "results/checkpoints"
)
START = config[
    "load_checkpoint_dir"
]  # what training starts from (fine-tuning, transfer learning)
MODEL_DIR = CHECKPOINT_DIR if TRAIN else START or config["checkpoint_dir"]
EVALUATE = "test" in SPLITS and bool(
    MODEL_DIR
)  # a model and a test set to evaluate it on
EXPORT_DIR = (
    config["export_dir"] if MODEL_DIR else ""
)  # DeepSpeech: empty means no export
AUGMENT_SOURCES = dsaugspec.sources(
    config["augment"]
)  # overlay sources: training inputs
# The decoder's language model: the user's scorer_path, or the package built from the training transcripts; with
# lm_optimize, evaluation uses a copy with the alpha/beta found on the dev set as its defaults.
SCORER = config["scorer_path"] or ("results/lm/lm.scorer" if config["build_lm"] else "")
EVAL_SCORER = (
    "results/lm/optimized.scorer" if config["lm_optimize"] and SCORER else SCORER
)


wildcard_constraints:
    split="train|dev|test|metrics",


def split_csvs(split):
    """The CSV files of a split (written by import_cv, or the user's *_files)."""
    if CV_DIR and split != "metrics":
        return [f"results/import/{split}.csv"]
    return dsflags.file_list(config[f"{split}_files"])


def source_files(split):
    """The data of a split as you named it: your CSVs, or the Common Voice TSV (reports name it)."""
    return (
        [f"{CV_DIR}/{split}.tsv"]
        if CV_DIR and split != "metrics"
        else split_csvs(split)
    )


def audio_fingerprint(split):
    """The content of the audio files the split's CSVs list, so that a changed audio file re-runs its split
    (dsflow.fingerprint). The import's CSVs list the import's own WAVs: the release's clips are fingerprinted for
    the import instead."""
    if CV_DIR and split != "metrics":
        return ""
    return dsfp.of_csvs(split_csvs(split))


def augment_fingerprint():
    """The content of the overlay sources' audio (augment), which changes what training sees."""
    return dsfp.of_csvs(AUGMENT_SOURCES) if AUGMENT_SOURCES else ""


def clips_fingerprint():
    """The content of the clips a Common Voice release lists (not of the demo corpus, a rule's output)."""
    return (
        dsfp.of_common_voice(CV_DIR) if CV_DIR and CV_DIR != dscfg.DEMO_CV_DIR else ""
    )


def code(command):
    """The package files a `dsflow COMMAND` job runs (its import closure), as inputs: Snakemake does not follow
    imports, and an edit of any of them must re-run the job."""
    return dsdeps.command_code("src/dsflow", command)


def final_outputs():
    """What `snakemake` with no target makes."""
    outputs = expand("results/features/{split}", split=SPLITS)
    if TRAIN:
        outputs.append(CHECKPOINT_DIR)
    if EVALUATE:
        outputs.append("results/evaluate/report.md")
    if EXPORT_DIR:
        outputs.append(EXPORT_DIR)
    # the report's figures and pages
    outputs.append("results/report/validation.html")
    if TRAIN:
        outputs += ["results/report/training.png", "results/report/run.html"]
    if EVALUATE:
        outputs.append("results/report/evaluation.html")
    return outputs
