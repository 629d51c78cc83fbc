import shlex

# DeepSpeech: an empty export_dir means no export.
EXPORT_DIR = config["export_dir"]
# DeepSpeech's export flags that `dsflow export` takes under the same names.
EXPORT_FLAGS = [
    "export_tflite",
    "export_quantize",
    "n_steps",
    "export_file_name",
    "export_beam_width",
    "export_author_id",
    "export_model_name",
    "export_model_version",
    "export_contact_info",
    "export_license",
    "export_language",
    "export_min_ds_version",
    "export_max_ds_version",
    "export_description",
]


rule export:
    """DeepSpeech's export of the best-dev checkpoint: streaming TF SavedModel, TFLite, metadata, model card."""
    input:
        checkpoint=CHECKPOINT_DIR,
        code=code("export", "model", "alphabet", "features"),
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
        load=config["load_evaluate"],
        flags=" ".join(f"--{k} {shlex.quote(str(config[k]))}" for k in EXPORT_FLAGS),
    shell:
        "dsflow --log {log} export --checkpoint_dir {input.checkpoint:q} --export_dir {output:q}"
        " --load_evaluate {params.load} {params.flags}"
