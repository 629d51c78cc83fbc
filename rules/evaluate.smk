rule evaluate:
    """DeepSpeech's test report on the test split with the best-dev checkpoint (beam search with the scorer, else greedy)."""
    input:
        checkpoint=CHECKPOINT_DIR,
        test="results/features/test",
        scorer=SCORER or [],
        code=code("evaluate", "model", "decode", "dataset"),
    output:
        report="results/evaluate/report.md",
        samples="results/evaluate/test_output.json",
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
        load=config["load_evaluate"],
        batch=config["test_batch_size"],
        report_count=config["report_count"],
        decoder=" ".join(
            f"--{k} {config[k]}"
            for k in (
                "beam_width",
                "lm_alpha",
                "lm_beta",
                "cutoff_prob",
                "cutoff_top_n",
                "beam_threshold",
            )
        ),
    shell:
        "dsflow --log {log} evaluate --checkpoint_dir {input.checkpoint:q} --test_features {input.test}"
        " --load_evaluate {params.load} --test_batch_size {params.batch} --report_count {params.report_count}"
        " --test_output_file {output.samples} --report {output.report} --metrics {output.metrics}"
        " --threads {threads} --scorer_path={input.scorer:q} {params.decoder}"
