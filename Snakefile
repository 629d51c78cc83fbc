# dsflow: DeepSpeech 0.9.3 training as a Snakemake workflow.
#   snakemake --cores 8 --resources gpu=1
# Stages: [demo corpus] -> [Common Voice import] -> validate CSVs -> features -> train -> evaluate -> export


import os

import dsflow.log as dslog

from snakemake.utils import min_version

min_version("9.0")


# Your settings; with no data set, the demo's (config/demo.yaml). rules/common.smk resolves and checks them.
configfile: "config/config.yaml"


include: "rules/common.smk"


# Used with --sdm apptainer only (see containers/ and the README); ignored otherwise.
container: config["container_image"]


# The front page of `snakemake --report report.html`; figures and pages come from rules/report.smk.
report: "report/workflow.rst"


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
        final_outputs(),


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
    elif TRAIN and not EXPORT_DIR:
        print(
            "No export: export_dir is empty (DeepSpeech's default); set it to export the model."
        )


onerror:
    # One line per failed job, with its reason (the rest is in its log file).
    for line in dslog.failure_summary(log):
        print(f"dsflow: {line}")
