# dsflow: DeepSpeech 0.9.3 training as a Snakemake workflow.
#   snakemake --cores 8 --resources gpu=1
# Stages: [demo corpus] -> [Common Voice import] -> validate CSVs -> features -> train -> evaluate -> export


import os

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# Used with --sdm apptainer only (see containers/ and the README); ignored otherwise.
container: config["container_image"]


# The front page of `snakemake --report report.html`; figures and pages come from rules/report.smk.
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/import.smk"
include: "rules/validate.smk"
include: "rules/features.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/lm.smk"
include: "rules/report.smk"
include: "rules/export.smk"


rule all:
    default_target: True
    input:
        expand("results/features/{split}", split=SPLITS),
        CHECKPOINT_DIR if "train" in SPLITS else [],
        "results/evaluate/report.md" if EVALUATE else [],
        # For the report: the training curves, evaluation and validation pages.
        "results/report/training.png" if "train" in SPLITS else [],
        "results/report/evaluation.html" if EVALUATE else [],
        "results/report/validation.html",
        EXPORT_DIR if EXPORT_DIR and "train" in SPLITS else [],


onsuccess:
    # Where the results are, at the end of the main command.
    for what, path in (
        ("Test report", "results/evaluate/report.md"),
        ("Report pages", "results/report"),
        ("Exported model", EXPORT_DIR),
    ):
        if path and os.path.exists(path):
            print(f"{what}: {os.path.abspath(path)}")
    if EXPORT_DIR and os.path.exists(EXPORT_DIR):
        print(f"Transcribe audio with: dsflow transcribe {EXPORT_DIR} FILE.wav ...")
