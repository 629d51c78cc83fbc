rule features:
    """DeepSpeech's MFCC features of one validated split, in TFRecord shards streamed by tf.data."""
    input:
        csv="results/validate/{split}.csv",
        code=code("features"),
    output:
        directory("results/features/{split}"),
    log:
        f"{LOGS}/features_{{split}}.log",
    wildcard_constraints:
        split="train|dev|test",
    threads: 8
    params:
        rate=config["audio_sample_rate"],
        win_len=config["feature_win_len"],
        win_step=config["feature_win_step"],
    shell:
        "dsflow --log {log} features --csv {input.csv} --out-dir {output} --sample-rate {params.rate}"
        " --win-len {params.win_len} --win-step {params.win_step} --threads {threads}"
