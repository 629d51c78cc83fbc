# Only with training: without it, checkpoint_dir is the (existing) model that evaluation and export use.
if TRAIN:

    rule train:
        """DeepSpeech's training loop; resumable state lives in results/work/train (not an output)."""
        input:
            train="results/features/train",
            dev=expand(
                "results/features/{split}", split=["dev"] if "dev" in SPLITS else []
            ),
            metrics=expand(
                "results/features/{split}",
                split=["metrics"] if "metrics" in SPLITS else [],
            ),
            alphabet=config["alphabet_config_path"],
            # Every split is validated before training starts (a bad test CSV fails first, not hours later), but a
            # re-validated split does not re-run training by itself: ancient() ignores these files' times.
            validated=ancient(
                expand("results/validate/{split}.summary.json", split=SPLITS)
            ),
            start=START or [],  # fine-tuning / transfer learning: a new starting point re-runs training
            overlay=AUGMENT_SOURCES,
            code=code("train"),
        output:
            directory(CHECKPOINT_DIR),
        log:
            f"{LOGS}/train.log",
        container:
            config["container_image_gpu"]
        threads: 8
        resources:
            # train_gpus GPUs; with train_nodes > 1 that many per node, one task each (dsflow.distribute)
            **dsdist.rule_resources(config),
        params:
            # Snakemake deletes a job's outputs before it runs: the resumable state must not be one.
            # dsflow train keeps it in a subfolder named by the run's identity (model, data, settings).
            work="results/work/train",
            dev=lambda w, input: ",".join(input.dev),
            metrics=lambda w, input: ",".join(input.metrics),
            flags=dsflags.render("train", config),
            overlay_audio=lambda w: augment_fingerprint(),
            start=lambda w: dsfp.of_checkpoint(START) if START else "",
            # several tasks (train_nodes > 1): srun starts them, one per node
            launch=lambda wildcards, resources, threads: dsdist.launcher(
                resources, threads
            ),
        shell:
            "{params.launch}dsflow --log {log} train {params.flags} --train_features {input.train} --dev_features={params.dev}"
            " --metrics_features={params.metrics}"
            " --alphabet_config_path {input.alphabet:q} --checkpoint_dir {output:q} --work_dir {params.work}"
            " --threads {threads}"
