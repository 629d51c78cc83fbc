rule import_cv:
    """DeepSpeech's import_cv2: a Common Voice release folder -> 16 kHz WAVs + train/dev/test CSVs."""
    input:
        cv=CV_DIR or [],
        alphabet=config["alphabet_config_path"],
        code=code("importer", "text", "alphabet"),
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
        normalize="--normalize" if config["import_normalize"] else "",
        filter_alphabet=(
            "" if config["import_filter_alphabet"] else "--no-filter-alphabet"
        ),
        max_secs=config["import_max_secs"],
        rate=config["audio_sample_rate"],
    shell:
        "dsflow --log {log} import-cv --cv-dir {input.cv:q} --out-dir results/import --wav-dir {params.wav_dir}"
        " --alphabet {input.alphabet:q} {params.normalize} {params.filter_alphabet} --max-secs {params.max_secs}"
        " --sample-rate {params.rate} --threads {threads}"
