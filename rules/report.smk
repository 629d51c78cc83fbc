# Figures and pages for `snakemake --report report.html` (its report() outputs are shown inline there).


rule plot:
    """The training curves (per-epoch train/dev loss, learning rate) and the test WER/CER summary."""
    input:
        checkpoint=CHECKPOINT_DIR,
        evaluation=rules.evaluate.output.metrics if EVALUATE else [],
        samples=rules.evaluate.output.samples if EVALUATE else [],
        code=code("plot"),
    output:
        report(
            "results/report/training.png",
            caption="../report/training.rst",
            category="Training",
        ),
    log:
        f"{LOGS}/plot.log",
    params:
        evaluation=lambda w, input: (
            f"--evaluation {input.evaluation} --samples {input.samples}"
            if input.evaluation
            else ""
        ),
    shell:
        "dsflow --log {log} plot --metrics {input.checkpoint:q}/metrics.csv {params.evaluation} --out {output}"


rule evaluation_page:
    """The evaluation's report (WER/CER table, best/median/worst samples) as an HTML page."""
    input:
        markdown=rules.evaluate.output.report,
        code=code("page"),
    output:
        report(
            "results/report/evaluation.html",
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
    log:
        f"{LOGS}/evaluation_page.log",
    shell:
        "dsflow --log {log} page --markdown {input.markdown} --out {output}"


rule validation_page:
    """The validation summaries of every split as one table."""
    input:
        summaries=expand("results/validate/{split}.summary.json", split=SPLITS),
        code=code("page"),
    output:
        report(
            "results/report/validation.html",
            caption="../report/validation.rst",
            category="Validation",
        ),
    log:
        f"{LOGS}/validation_page.log",
    shell:
        "dsflow --log {log} page --validation {input.summaries} --out {output}"


rule run_page:
    """The run that made the results: its training flags (flags.json) and progress, whatever the report's config."""
    input:
        checkpoint=CHECKPOINT_DIR,
        code=code("page"),
    output:
        report(
            "results/report/run.html",
            caption="../report/run.rst",
            category="Training",
        ),
    log:
        f"{LOGS}/run_page.log",
    shell:
        "dsflow --log {log} page --run {input.checkpoint:q} --out {output}"
