rule validate:
    """Check one split's CSVs (audio, transcripts, alphabet, train leakage) before any feature work."""
    input:
        csv=lambda w: split_csvs(w.split),
        train=lambda w: (
            split_csvs("train") if w.split != "train" and "train" in SPLITS else []
        ),
        alphabet=config["alphabet_config_path"],
        code=code("validate", "wavinfo", "alphabet"),
    output:
        csv="results/validate/{split}.csv",
        rejects="results/validate/{split}.rejected.tsv",
        summary="results/validate/{split}.summary.json",
        audio=directory("results/validate/{split}_audio"),
    log:
        f"{LOGS}/validate_{{split}}.log",
    wildcard_constraints:
        split="train|dev|test",
    threads: 8
    params:
        csv=lambda w, input: ",".join(input.csv),
        train=lambda w, input: ",".join(input.train),
        policy=config["validation_policy"],
        normalize=(
            "--normalize-sample-rate"
            if config["normalize_sample_rate"]
            else "--no-normalize-sample-rate"
        ),
        rate=config["audio_sample_rate"],
        win_len=config["feature_win_len"],
        win_step=config["feature_win_step"],
    shell:
        "dsflow --log {log} validate --split {wildcards.split} --csv={params.csv:q} --train-csv={params.train:q}"
        " --alphabet {input.alphabet:q} --out-csv {output.csv} --rejects {output.rejects}"
        " --summary {output.summary} --audio-dir {output.audio} --sample-rate {params.rate}"
        " --win-len {params.win_len} --win-step {params.win_step} --policy {params.policy}"
        " {params.normalize} --threads {threads}"
