rule evaluate:
    """DeepSpeech's test report on the test split with the best-dev checkpoint (beam search with the scorer, else greedy)."""
    input:
        checkpoint=MODEL_DIR,
        test="results/features/test",
        scorer=EVAL_SCORER or [],
        code=code("evaluate"),
    output:
        report="results/evaluate/report.md",
        samples=config["test_output_file"] or "results/evaluate/test_output.json",
        metrics="results/evaluate/metrics.json",
    log:
        f"{LOGS}/evaluate.log",
    container:
        config["container_image_gpu"]
    threads: 8
    resources:
        gpu=1,
        gpu_model=config["gpu_model"],
    params:
        flags=dsflags.render("evaluate", config),
    shell:
        "dsflow --log {log} evaluate {params.flags} --checkpoint_dir {input.checkpoint:q}"
        " --test_features {input.test} --scorer_path={input.scorer:q} --test_output_file {output.samples}"
        " --report {output.report} --metrics {output.metrics} --threads {threads}"
