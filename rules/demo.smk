rule demo_corpus:
    """The bundled demo corpus: Harvard sentences spoken by espeak-ng, laid out like a Common Voice release."""
    input:
        text="data/text/harvard_sentences.txt",
        code=code("demo-corpus"),
    output:
        directory(dscfg.DEMO_CV_DIR),
    log:
        f"{LOGS}/demo_corpus.log",
    threads: 8
    shell:
        "dsflow --log {log} demo-corpus --text {input.text} --out {output} --threads {threads}"
