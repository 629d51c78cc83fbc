# Shared helpers. Config checks that the schema cannot express, and where each split's CSVs come from.
import dsflow.config as dscfg
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# `--config scorer_path=` / `--config early_stop=false`: read them as the schema types them.
dscfg.coerce_cli_values(config)
validate(config, "../config/config.schema.yaml")
_errors = dscfg.check(config)
if _errors:
    raise WorkflowError(
        "the configuration has problems (config/config.yaml, --configfile or --config):\n  - "
        + "\n  - ".join(_errors)
    )

CV_DIR = config["common_voice_dir"]
SPLITS = (
    [s for s in dscfg.SPLITS]
    if CV_DIR
    else [s for s in dscfg.SPLITS if dscfg.file_list(config[f"{s}_files"])]
)
LOGS = "results/logs"
EVALUATE = {"train", "test"} <= set(
    SPLITS
)  # a model to train and a test set to evaluate it on
CHECKPOINT_DIR = config["checkpoint_dir"] or "results/checkpoints"
# The decoder's language model: the user's scorer_path, or the one built from the training transcripts.
SCORER = config["scorer_path"] or ("results/lm/lm.binary" if config["build_lm"] else "")
# DeepSpeech's training flags that `dsflow train` takes under the same names.
TRAIN_FLAGS = [
    "epochs",
    "learning_rate",
    "beta1",
    "beta2",
    "epsilon",
    "dropout_rate",
    "dropout_rate2",
    "dropout_rate3",
    "dropout_rate6",
    "relu_clip",
    "n_hidden",
    "layer_norm",
    "random_seed",
    "train_batch_size",
    "dev_batch_size",
    "automatic_mixed_precision",
    "checkpoint_secs",
    "max_to_keep",
    "load_train",
    "early_stop",
    "es_epochs",
    "es_min_delta",
    "reduce_lr_on_plateau",
    "plateau_epochs",
    "plateau_reduction",
]


def split_csvs(split):
    """The CSV files of a split (written by import_cv, or the user's *_files)."""
    if CV_DIR:
        return [f"results/import/{split}.csv"]
    return dscfg.file_list(config[f"{split}_files"])


def code(*modules):
    """Package modules that a job runs, to be listed as its inputs (Snakemake does not track imports)."""
    return [f"src/dsflow/{m}.py" for m in modules]
