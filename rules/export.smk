rule export:
    """DeepSpeech's export of the best-dev checkpoint: its .tflite (export_tflite), a TF SavedModel, metadata, model
    card; with export_zip also <export_dir>.zip with the scorer."""
    input:
        checkpoint=MODEL_DIR,
        scorer=EVAL_SCORER if config["export_zip"] and EVAL_SCORER else [],
        code=code("export"),
    output:
        export=directory(EXPORT_DIR or "results/export"),
        zip=f"{EXPORT_DIR}.zip" if config["export_zip"] else [],
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
        "dsflow --log {log} export {params.flags} --checkpoint_dir {input.checkpoint:q} --export_dir {output.export:q}"
        " --scorer_path={input.scorer:q}"
