rule export:
    """DeepSpeech's export of the best-dev checkpoint: streaming TF SavedModel, TFLite, metadata, model card."""
    input:
        checkpoint=MODEL_DIR,
        code=code("export"),
    output:
        directory(EXPORT_DIR or "results/export"),
    log:
        f"{LOGS}/export.log",
    container:
        config["container_image_gpu"]
    resources:
        gpu=1,
        gpu_model=config["gpu_model"],
    params:
        flags=dsflags.render("export", config),
    shell:
        "dsflow --log {log} export {params.flags} --checkpoint_dir {input.checkpoint:q} --export_dir {output:q}"
