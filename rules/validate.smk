rule validate:
    """Check one split's CSVs (audio, transcripts, alphabet, train leakage) before any feature work."""
    input:
        csv=lambda w: split_csvs(w.split),
        train=lambda w: (
            split_csvs("train") if w.split != "train" and "train" in SPLITS else []
        ),
        alphabet=config["alphabet_config_path"],
        code=code("validate"),
    output:
        csv="results/validate/{split}.csv",
        rejects="results/validate/{split}.rejected.tsv",
        summary="results/validate/{split}.summary.json",
        audio=directory("results/validate/{split}_audio"),
    log:
        f"{LOGS}/validate_{{split}}.log",
    threads: 8
    params:
        csv=lambda w, input: ",".join(input.csv),
        train=lambda w, input: ",".join(input.train),
        flags=dsflags.render("validate", config),
        audio=lambda w: audio_fingerprint(w.split),
    shell:
        "dsflow --log {log} validate {params.flags} --split {wildcards.split} --csv={params.csv:q}"
        " --train_csv={params.train:q} --alphabet_config_path {input.alphabet:q} --out_csv {output.csv}"
        " --rejects {output.rejects} --summary {output.summary} --audio_dir {output.audio} --threads {threads}"
