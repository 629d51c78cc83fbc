# Shared helpers. Config checks that the schema cannot express, and where each split's CSVs come from.
import dsflow.config as dscfg
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# `--config scorer_path=` gives None: read it as DeepSpeech's empty string.
dscfg.empty_strings(config)
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


def split_csvs(split):
    """The CSV files of a split (written by import_cv, or the user's *_files)."""
    if CV_DIR:
        return [f"results/import/{split}.csv"]
    return dscfg.file_list(config[f"{split}_files"])


def code(*modules):
    """Package modules that a job runs, to be listed as its inputs (Snakemake does not track imports)."""
    return [f"src/dsflow/{m}.py" for m in modules]
