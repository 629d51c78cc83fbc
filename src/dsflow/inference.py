"""The trained network over a features folder: each utterance's softmax probabilities and CTC loss, in the
folder's order (for evaluate and lm-optimize, which decode them)."""

from __future__ import annotations

import math

from dsflow.log import Progress, log


def make_step(net):
    """The evaluation step: (features, lengths, labels, label lengths) -> (logits [T, B, C], CTC losses)."""
    import tensorflow as tf

    from dsflow import model

    spec = [tf.TensorSpec([None, None, model.N_INPUT], tf.float32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=spec)
    def step(features, feature_lengths, labels, label_lengths):
        logits = net(features, None, None, tf.float32)  # [T, B, C]; evaluation always in float32
        return logits, model.ctc_loss(logits, feature_lengths, labels, label_lengths)

    return step


def acoustic(net, features_dir: str, batch_size: int, step, limit: int = 0, reverse: bool = False
             ) -> tuple[list[tuple], list]:
    """Run the network over a features folder (index order; its `limit` shortest utterances, longest first with
    `reverse`): [(wav_filename, transcript, loss)] and each utterance's softmax probabilities [T, C] (its real
    frames only)."""
    import numpy as np

    from dsflow import dataset

    index = dataset.rows(features_dir, limit, reverse)
    data = dataset.load(features_dir, net.alphabet, batch_size, train=False, limit=limit, reverse=reverse)
    pending, probs = [], []  # (wav_filename, src, loss) and softmax probabilities [T, C] of each utterance
    with Progress(f"Testing {features_dir}", math.ceil(len(index) / batch_size), "batches") as progress:
        for batch in data:
            logits, losses = step(batch["features"], batch["feature_lengths"], batch["labels"],
                                  batch["label_lengths"])
            logits, losses, lengths = logits.numpy(), losses.numpy(), batch["feature_lengths"].numpy()
            names = [n.decode("utf-8") for n in batch["wav_filename"].numpy()]
            bad = [n for n, v in zip(names, losses) if not np.isfinite(v)]
            if bad:
                log.error("The following files caused an infinite (or NaN) loss: %s", ",".join(bad))
            e = np.exp(logits - logits.max(axis=-1, keepdims=True))
            softmax = e / e.sum(axis=-1, keepdims=True)  # DeepSpeech decodes softmax(logits)
            for i, name in enumerate(names):
                row = index.iloc[len(pending)]
                if row["wav_filename"] != name:  # the batches follow the index; anything else is a bug
                    raise RuntimeError(f"{features_dir}: batch item {name} is not index row {row['wav_filename']}")
                pending.append((name, row["transcript"], losses[i]))
                probs.append(softmax[: lengths[i], i])
            progress.update()
    return pending, probs
