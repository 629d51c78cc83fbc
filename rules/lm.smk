rule lm:
    """A KenLM scorer from the validated training transcripts (never dev/test text), when build_lm is set."""
    input:
        text="results/validate/train.csv",
        alphabet=config["alphabet_config_path"],
        code=code("build-lm"),
    output:
        lm="results/lm/lm.binary",
        words="results/lm/lm.binary.words",
    log:
        f"{LOGS}/lm.log",
    params:
        flags=dsflags.render("build-lm", config),
    shell:
        "dsflow --log {log} build-lm {params.flags} --text {input.text}"
        " --alphabet_config_path {input.alphabet:q} --output {output.lm}"
