rule import_cv:
    """DeepSpeech's import_cv2: a Common Voice release folder -> 16 kHz WAVs + train/dev/test CSVs."""
    input:
        cv=CV_DIR or [],
        alphabet=config["alphabet_config_path"],
        code=code("import-cv"),
    output:
        csv=expand("results/import/{split}.csv", split=dscfg.SPLITS),
        rejects="results/import/rejected.tsv",
        summary="results/import/summary.json",
    log:
        f"{LOGS}/import_cv.log",
    threads: 8
    params:
        # Converted WAVs are a cache, not an output: Snakemake would delete them before a re-run.
        wav_dir="results/cache/import_wav",
        flags=dsflags.render("import-cv", config),
        clips=lambda w: clips_fingerprint(),
    shell:
        "dsflow --log {log} import-cv {params.flags} --cv_dir {input.cv:q} --out_dir results/import"
        " --wav_dir {params.wav_dir} --alphabet_config_path {input.alphabet:q} --threads {threads}"
