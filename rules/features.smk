rule features:
    """DeepSpeech's MFCC features of one validated split, in TFRecord shards streamed by tf.data."""
    input:
        csv="results/validate/{split}.csv",
        code=code("features"),
    output:
        directory("results/features/{split}"),
    log:
        f"{LOGS}/features_{{split}}.log",
    threads: 8
    params:
        flags=dsflags.render("features", config),
        source=lambda w: ",".join(source_files(w.split)),
    shell:
        "dsflow --log {log} features {params.flags} --csv {input.csv} --out_dir {output}"
        " --source={params.source:q} --threads {threads}"
