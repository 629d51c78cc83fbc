rule lm:
    """A KenLM scorer from the validated training transcripts (never dev/test text), when build_lm is set: the binary
    with its word list, and DeepSpeech's .scorer package of them."""
    input:
        text="results/validate/train.csv",
        alphabet=config["alphabet_config_path"],
        code=code("build-lm"),
    output:
        lm="results/lm/lm.binary",
        words="results/lm/lm.binary.words",
        package="results/lm/lm.scorer",
    log:
        f"{LOGS}/lm.log",
    params:
        flags=dsflags.render("build-lm", config),
    shell:
        "dsflow --log {log} build-lm {params.flags} --text {input.text}"
        " --alphabet_config_path {input.alphabet:q} --output {output.lm} --package {output.package}"


rule lm_optimize:
    """DeepSpeech's lm_optimizer.py, when lm_optimize is set: lm_alpha/lm_beta searched on the dev split (Optuna
    TPE; the acoustic model runs once), the best pair written into a copy of the scorer package as its defaults.
    """
    input:
        checkpoint=MODEL_DIR,
        dev="results/features/dev",
        scorer=SCORER or [],
        code=code("lm-optimize"),
    output:
        best="results/lm/lm_optimize.json",
        scorer="results/lm/optimized.scorer",
    log:
        f"{LOGS}/lm_optimize.log",
    container:
        config["container_image_gpu"]
    threads: 8
    resources:
        gpu=1,
        gpu_model=config["gpu_model"],
    params:
        flags=dsflags.render("lm-optimize", config),
    shell:
        "dsflow --log {log} lm-optimize {params.flags} --checkpoint_dir {input.checkpoint:q}"
        " --test_features {input.dev} --scorer_path {input.scorer:q} --threads {threads} --output {output.best}"
        " --output_scorer {output.scorer}"
