"""DeepSpeech 0.9.x TF1 checkpoints (dsflow.dscheckpoint) against DeepSpeech's own TF1 graph.

`DeepSpeechTF1` below is DeepSpeech 0.9.3's training graph (train.py create_model + AdamOptimizer +
global_step + learning_rate variable) written in TF1 style with tf.compat.v1: variables created by name with
tf.compat.v1.get_variable, the identity-conv1d context window, clipped ReLU, `BlockLSTM` (what
LSTMBlockFusedCell(forget_bias=0) runs: w [input + cell, 4 * cell], gates i, ci, f, o; no cell clip), optional
layer norm (tf.contrib.layers.layer_norm: LayerNorm/beta, LayerNorm/gamma, epsilon 1e-12), and checkpoints
written and read by tf.compat.v1.train.Saver. So the checkpoints it writes are not written by dscheckpoint, and
its Saver.restore checks that dscheckpoint's files have every variable DeepSpeech's graph needs.
"""

import logging

import numpy as np
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")

from dsflow import UserError, checkpoints, dscheckpoint, model  # noqa: E402
from dsflow.alphabet import Alphabet  # noqa: E402
from dsflow.cli import main  # noqa: E402
from dsflow.mfcc import mfcc  # noqa: E402
from dsflow.model import step_functions  # noqa: E402
from tests.conftest import DATA, LDC  # noqa: E402

v1 = tf.compat.v1
ENGLISH = Alphabet.from_file(DATA / "alphabet.txt")
TEXT = "she had your dark suit in greasy wash water all year"
LSTM = dscheckpoint.LSTM


def ldc_batch():
    """LDC93S1's features twice: whole, and its first 100 frames zero-padded (a batch with padding)."""
    samples, rate = sf.read(LDC / "LDC93S1.wav", dtype="int16")
    x = mfcc(samples, rate)
    t = len(x)
    features = np.stack([x, np.concatenate([x[:100], np.zeros_like(x[100:])])])
    labels = np.array(ENGLISH.encode(TEXT), np.int32)
    short = np.array(ENGLISH.encode("she had your dark suit"), np.int32)
    padded = np.full([2, len(labels)], -1, np.int32)
    padded[0], padded[1, :len(short)] = labels, short
    return features, np.array([t, 100], np.int32), padded, np.array([len(labels), len(short)], np.int32)


class DeepSpeechTF1:
    """DeepSpeech 0.9.3's graph in TF1 style (see the module docstring); random biases and layer-norm parameters
    so that a swapped or misplaced tensor changes the logits."""

    def __init__(self, n_hidden, n_classes, layer_norm=False, learning_rate=0.001, seed=1):
        self.graph = tf.Graph()
        with self.graph.as_default():
            v1.set_random_seed(seed)
            self.x = v1.placeholder(tf.float32, [None, None, 26])
            self.seq_len = v1.placeholder(tf.int32, [None])
            self.labels = v1.placeholder(tf.int32, [None, None])
            self.logits = self._model(n_hidden, n_classes, layer_norm)
            mask = self.labels >= 0
            sparse = tf.SparseTensor(tf.where(mask), tf.boolean_mask(self.labels, mask),
                                     tf.shape(self.labels, out_type=tf.int64))
            self.loss = tf.reduce_mean(v1.nn.ctc_loss(labels=sparse, inputs=self.logits, sequence_length=self.seq_len))
            lr = v1.get_variable("learning_rate", initializer=learning_rate, trainable=False)
            optimizer = v1.train.AdamOptimizer(learning_rate=lr, beta1=0.9, beta2=0.999, epsilon=1e-8)
            self.global_step = v1.train.get_or_create_global_step()
            self.train_op = optimizer.apply_gradients(optimizer.compute_gradients(self.loss),
                                                      global_step=self.global_step)
            self.saver = v1.train.Saver(max_to_keep=5)
            self.session = v1.Session(graph=self.graph)
            self.session.run(v1.global_variables_initializer())

    def _model(self, n_hidden, n_classes, layer_norm):
        random = v1.random_normal_initializer(stddev=0.1)

        def dense(name, x, units, relu=True, ln=False):
            with v1.variable_scope(name):
                bias = v1.get_variable("bias", [units], initializer=random)
                weights = v1.get_variable("weights", [x.shape[-1], units],
                                          initializer=v1.variance_scaling_initializer(1.0, "fan_avg", "uniform"))
            out = tf.nn.bias_add(tf.matmul(x, weights), bias)
            if relu:
                out = tf.minimum(tf.nn.relu(out), 20.0)
            if ln:
                with v1.variable_scope(name), v1.variable_scope("LayerNorm"):
                    beta = v1.get_variable("beta", [units], initializer=random)
                    gamma = v1.get_variable("gamma", [units], initializer=v1.random_normal_initializer(1.0, 0.1))
                mean, variance = tf.nn.moments(out, [-1], keepdims=True)
                out = tf.nn.batch_normalization(out, mean, variance, beta, gamma, 1e-12)
            return out

        batch = tf.shape(self.x)[0]
        eye = tf.constant(np.eye(494).reshape(19, 26, 494), tf.float32)  # create_overlapping_windows
        windows = tf.reshape(tf.nn.conv1d(input=self.x, filters=eye, stride=1, padding="SAME"), [batch, -1, 19, 26])
        x = tf.reshape(tf.transpose(windows, [1, 0, 2, 3]), [-1, 494])
        x = dense("layer_1", x, n_hidden, ln=layer_norm)
        x = dense("layer_2", x, n_hidden, ln=layer_norm)
        x = dense("layer_3", x, n_hidden, ln=layer_norm)
        x = tf.reshape(x, [-1, batch, n_hidden])
        with v1.variable_scope(LSTM):  # rnn_impl_lstmblockfusedcell: LSTMBlockFusedCell(n, forget_bias=0)
            kernel = v1.get_variable("kernel", [2 * n_hidden, 4 * n_hidden])
            bias = v1.get_variable("bias", [4 * n_hidden], initializer=random)
        zeros, diag = tf.zeros([batch, n_hidden]), tf.zeros([n_hidden])
        out = tf.raw_ops.BlockLSTM(seq_len_max=tf.cast(tf.reduce_max(self.seq_len), tf.int64), x=x, cs_prev=zeros,
                                   h_prev=zeros, w=kernel, wci=diag, wcf=diag, wco=diag, b=bias, forget_bias=0.0,
                                   cell_clip=-1.0, use_peephole=False).h
        # LSTMBlockWrapper zeroes the outputs past each sequence's length
        out *= tf.transpose(tf.sequence_mask(self.seq_len, tf.shape(x)[0], tf.float32))[:, :, None]
        x = dense("layer_5", tf.reshape(out, [-1, n_hidden]), n_hidden, ln=layer_norm)
        x = dense("layer_6", x, n_classes, relu=False)
        return tf.reshape(x, [-1, batch, n_classes])

    def feed(self, features, lengths, labels=None):
        feed = {self.x: features, self.seq_len: lengths}
        if labels is not None:
            feed[self.labels] = labels
        return feed

    def save(self, prefix, **kwargs):
        """Saver.save as DeepSpeech calls it: `prefix`-<global_step>."""
        with self.graph.as_default():
            return self.saver.save(self.session, prefix, global_step=self.session.run(self.global_step), **kwargs)

    def restore(self, prefix):
        with self.graph.as_default():
            self.saver.restore(self.session, prefix)

    def values(self):
        """Every global variable by DeepSpeech name (weights, Adam slots, beta powers, global_step, learning_rate)."""
        with self.graph.as_default():
            gvars = v1.global_variables()
        return dict(zip([v.op.name for v in gvars], self.session.run(gvars)))


def fresh(n_hidden, n_classes, layer_norm=False, seed=77):
    net = model.DeepSpeech(n_hidden, n_classes, layer_norm, seed=seed)
    opt = model.adam(0.001)
    opt.build(net.trainable_variables)
    return net, opt


def randomize(net, opt, iterations, seed=5):
    """Random weights and Adam moments (velocities positive), a step count and a learning rate."""
    rng = np.random.default_rng(seed)
    for v in net.trainable_variables:
        v.assign(rng.normal(0, 0.2, v.shape).astype(np.float32))
    for name, var in dscheckpoint.variables(net).items():
        m, vel = dscheckpoint._moments(opt, var)
        m.assign(rng.normal(0, 0.01, var.shape).astype(np.float32))
        vel.assign(rng.uniform(0, 1e-4, var.shape).astype(np.float32))
    opt.iterations.assign(iterations)
    opt.learning_rate.assign(0.00037)


def valid(logits, lengths):
    """The frames within each utterance's length (DeepSpeech zeroes the LSTM outputs past it; CTC ignores them)."""
    return [logits[:n, b] for b, n in enumerate(lengths)]


def assert_same_logits(ours, theirs, lengths):
    for a, b in zip(valid(ours, lengths), valid(theirs, lengths)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("layer_norm", [False, True])
def test_deepspeech_written_checkpoint_gives_deepspeech_logits_and_adam_continues_like_deepspeech(
        tmp_path, layer_norm):
    """A checkpoint written by DeepSpeech's graph after 2 Adam steps on LDC93S1: dsflow's model gives its logits;
    one more step of dsflow's trainer (Keras Adam) moves every weight as DeepSpeech's TF1 Adam step does."""
    features, lengths, labels, _ = ldc_batch()
    ds = DeepSpeechTF1(24, 29, layer_norm, learning_rate=0.002)
    feed = ds.feed(features, lengths, labels)
    for _ in range(2):
        ds.session.run(ds.train_op, feed)
    prefix = ds.save(str(tmp_path / "ds" / "train"))
    before = ds.values()
    ds_logits = ds.session.run(ds.logits, feed)
    ds.session.run(ds.train_op, feed)
    after = ds.values()

    net, opt = fresh(24, 29, layer_norm)
    state = dscheckpoint.load_into(net, opt, tmp_path / "ds", alphabet=ENGLISH)
    assert (state.path, state.global_step, state.learning_rate) == (prefix, 2, np.float32(0.002))
    assert state.initialized == [] and state.fresh_moments == []
    assert int(opt.iterations.numpy()) == 2
    opt.learning_rate.assign(dscheckpoint.learning_rate(state, 0.001, False))  # the stored one wins
    assert np.float32(opt.learning_rate.numpy()) == np.float32(0.002)
    names = dscheckpoint.variables(net)
    assert len(names) == (20 if layer_norm else 12)
    for name, var in names.items():  # the bits as stored
        m, v = dscheckpoint._moments(opt, var)
        np.testing.assert_array_equal(var.numpy(), before[name])
        np.testing.assert_array_equal(np.asarray(m), before[f"{name}/Adam"])
        np.testing.assert_array_equal(np.asarray(v), before[f"{name}/Adam_1"])
    assert_same_logits(net(tf.constant(features)).numpy(), ds_logits, lengths)

    gradients, apply, _ = step_functions(net, opt, None, tf.float32)
    batch = [tf.constant(a) for a in ldc_batch()]
    snapshot = {name: var.numpy() for name, var in names.items()}
    losses, grads = gradients(*batch, tf.constant([1, 2], tf.int64))
    apply(grads)
    assert int(opt.iterations.numpy()) == 3
    for name, var in names.items():
        ours, theirs = var.numpy() - snapshot[name], after[name] - before[name]
        scale = np.abs(theirs).max()
        assert scale > 1e-4, name  # every tensor moved (lr 0.002)
        # float32 rounding of the gradients, amplified where Adam's sqrt(v) is tiny; a wrong step count is 16% off
        assert np.abs(ours - theirs).max() <= 1e-2 * scale and np.abs(ours - theirs).mean() <= 1e-4 * scale, name
        m, v = dscheckpoint._moments(opt, var)
        for ours, slot in ((m, "Adam"), (v, "Adam_1")):  # the gradients agree to float32 rounding
            theirs = after[f"{name}/{slot}"]
            np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())

    # The same step with Adam's step count off by one misses DeepSpeech's update by far more than that tolerance.
    for name, var in names.items():
        var.assign(snapshot[name])
        m, v = dscheckpoint._moments(opt, var)
        m.assign(before[f"{name}/Adam"])
        v.assign(before[f"{name}/Adam_1"])
    opt.iterations.assign(1)
    apply(grads)
    kernel = f"{LSTM}/kernel"
    theirs = after[kernel] - before[kernel]
    assert np.abs(names[kernel].numpy() - snapshot[kernel] - theirs).max() > 0.1 * np.abs(theirs).max()


def test_written_checkpoint_restores_into_deepspeech_graph_with_the_same_logits(tmp_path):
    """dsflow -> DeepSpeech format: tf.compat.v1.train.Saver restores every variable of DeepSpeech's graph
    (weights, layer norm, Adam slots, beta powers, global_step, learning_rate), and its logits are dsflow's."""
    features, lengths, _, _ = ldc_batch()
    net, opt = fresh(20, 29, layer_norm=True)
    randomize(net, opt, iterations=41)
    flags = {"n_hidden": 20, "layer_norm": True, "learning_rate": 0.001, "epochs": 3, "dropout_rate2": -1.0,
             "early_stop": False, "work_dir": "/somewhere", "load_train": "auto", "epsilon": 1e-08}
    prefix = dscheckpoint.write(tmp_path / "out", net, opt, alphabet_path=DATA / "alphabet.txt", flags=flags)
    assert prefix == str(tmp_path / "out" / "train-41")
    assert (tmp_path / "out" / "checkpoint").read_text() == (
        'model_checkpoint_path: "train-41"\nall_model_checkpoint_paths: "train-41"\n')
    assert (tmp_path / "out" / "alphabet.txt").read_bytes() == (DATA / "alphabet.txt").read_bytes()
    assert (tmp_path / "out" / "flags.txt").read_text() == (
        "--dropout_rate2=-1.0\n--noearly_stop\n--epochs=3\n--epsilon=1e-08\n--layer_norm\n--learning_rate=0.001\n"
        "--noload_cudnn\n--load_train=auto\n--n_hidden=20\n--relu_clip=20.0\n--notrain_cudnn\n")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "alphabet.txt", "checkpoint", "flags.txt", "train-41.data-00000-of-00001", "train-41.index"]

    ds = DeepSpeechTF1(20, 29, layer_norm=True, seed=3)
    found = tf.train.get_checkpoint_state(str(tmp_path / "out")).model_checkpoint_path  # as DeepSpeech finds it
    ds.restore(found)  # fails on any missing variable or shape
    restored = ds.values()
    assert len(restored) == 20 * 3 + 4
    assert restored["global_step"] == 41 and restored["learning_rate"] == np.float32(0.00037)
    np.testing.assert_allclose(restored["beta1_power"], 0.9 ** 42, rtol=1e-5)
    np.testing.assert_allclose(restored["beta2_power"], 0.999 ** 42, rtol=1e-5)
    for name, var in dscheckpoint.variables(net).items():
        m, v = dscheckpoint._moments(opt, var)
        np.testing.assert_array_equal(restored[name], var.numpy())
        np.testing.assert_array_equal(restored[f"{name}/Adam"], np.asarray(m))
        np.testing.assert_array_equal(restored[f"{name}/Adam_1"], np.asarray(v))
    ds_logits = ds.session.run(ds.logits, ds.feed(features, lengths))
    assert_same_logits(net(tf.constant(features)).numpy(), ds_logits, lengths)


def test_round_trip_is_bit_identical(tmp_path):
    net, opt = fresh(12, 7, layer_norm=True)
    randomize(net, opt, iterations=123_456)
    dscheckpoint.write(tmp_path, net, opt, best_dev=True)
    assert (tmp_path / "best_dev_checkpoint").exists() and not (tmp_path / "checkpoint").exists()
    back, back_opt = fresh(12, 7, layer_norm=True, seed=1)
    state = dscheckpoint.load_into(back, back_opt, tmp_path, "best")
    back_opt.learning_rate.assign(dscheckpoint.learning_rate(state, 0.001, False))
    assert state.global_step == 123_456 and int(back_opt.iterations.numpy()) == 123_456
    assert len(opt.variables) == len(back_opt.variables) == 2 + 2 * 20
    for a, b in zip([*net.trainable_variables, *opt.variables], [*back.trainable_variables, *back_opt.variables]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the fingerprint follows the values
    again = dscheckpoint.write(tmp_path / "again", back, back_opt, best_dev=True)
    assert dscheckpoint.fingerprint(again) == dscheckpoint.fingerprint(state.path)
    back.layer_3.bias.assign_add(tf.ones_like(back.layer_3.bias))
    changed = dscheckpoint.write(tmp_path / "changed", back, back_opt, best_dev=True)
    assert dscheckpoint.fingerprint(changed) != dscheckpoint.fingerprint(state.path)
    # force_initialize_learning_rate, or a checkpoint without one: the flag's learning rate
    assert dscheckpoint.learning_rate(state, 0.001, True) == 0.001
    assert dscheckpoint.learning_rate(None, 0.001, False) == 0.001


@pytest.fixture(scope="module")
def ds_checkpoint(tmp_path_factory):
    """A DeepSpeech-written checkpoint (n_hidden 16, English) after one Adam step, and its values."""
    features, lengths, labels, _ = ldc_batch()
    ds = DeepSpeechTF1(16, 29)
    ds.session.run(ds.train_op, ds.feed(features, lengths, labels))
    directory = tmp_path_factory.mktemp("ds")
    prefix = ds.save(str(directory / "train"))
    values = ds.values()
    ds.session.close()
    return directory, prefix, values


EXPECTED_DROPS = {  # DeepSpeech's rule, by hand: N drops the last N layers, counted from the output
    1: {"layer_6"}, 2: {"layer_6", "layer_5"}, 3: {"layer_6", "layer_5", "lstm"},
    4: {"layer_6", "layer_5", "lstm", "layer_3"}, 5: {"layer_6", "layer_5", "lstm", "layer_3", "layer_2"},
    9: {"layer_6", "layer_5", "lstm", "layer_3", "layer_2"}}


@pytest.mark.parametrize("n", sorted(EXPECTED_DROPS))
def test_drop_source_layers_reinitializes_what_deepspeech_drops(ds_checkpoint, n, caplog):
    directory, prefix, values = ds_checkpoint
    net, opt = fresh(16, 29)
    init = {name: var.numpy() for name, var in dscheckpoint.variables(net).items()}
    with caplog.at_level(logging.WARNING, logger="dsflow"):
        state = dscheckpoint.load_into(net, opt, prefix, drop_source_layers=n)
    assert ("dropping 5" in caplog.text) == (n > 5)
    assert ("re-initializes beta2_power" in caplog.text) == (n >= 5)
    layer = lambda name: "lstm" if name.startswith("cudnn_lstm") else name.split("/")[0]  # noqa: E731
    assert {layer(name) for name in state.initialized} == EXPECTED_DROPS[n]
    assert state.fresh_moments == state.initialized
    for name, var in dscheckpoint.variables(net).items():
        m, v = dscheckpoint._moments(opt, var)
        if layer(name) in EXPECTED_DROPS[n]:
            np.testing.assert_array_equal(var.numpy(), init[name])
            assert not np.asarray(m).any() and not np.asarray(v).any()
        else:
            np.testing.assert_array_equal(var.numpy(), values[name])
            np.testing.assert_array_equal(np.asarray(v), values[f"{name}/Adam_1"])
    assert state.global_step == 1 and int(opt.iterations.numpy()) == 1
    # The substring rule on DeepSpeech's names (Adam slots and beta powers included)
    assert [dscheckpoint.dropped(k, 5) for k in ("beta1_power", "beta2_power", "global_step", "learning_rate",
                                                "layer_1/weights/Adam_1", "layer_2/bias/Adam")] == [
        False, True, False, False, False, True]


def test_another_alphabet_needs_the_output_layer_dropped(ds_checkpoint, tmp_path):
    directory, prefix, values = ds_checkpoint
    german = Alphabet(ENGLISH.labels + ["ä", "ö", "ü", "ß"], source="german.txt")
    with pytest.raises(UserError) as e:
        dscheckpoint.load_into(*fresh(16, len(german) + 1), prefix, alphabet=german)
    message = str(e.value)
    assert "tensor layer_6/weights is [16, 29] in the checkpoint but [16, 33] in the model" in message
    assert "29 outputs (28 labels + blank)" in message and "german.txt has 32 labels" in message
    assert "drop_source_layers 1" in message
    net, opt = fresh(16, len(german) + 1)
    state = dscheckpoint.load_into(net, opt, prefix, drop_source_layers=1, alphabet=german)
    assert state.initialized == ["layer_6/weights", "layer_6/bias"]
    np.testing.assert_array_equal(net.layer_5.weights.numpy(), values["layer_5/weights"])
    # Same size, other labels: an alphabet.txt beside the checkpoint tells
    (directory / "alphabet.txt").write_text("\n".join(reversed(ENGLISH.labels)) + "\n")
    try:
        with pytest.raises(UserError, match="labels differ from .*alphabet.txt's: set drop_source_layers 1"):
            dscheckpoint.load_into(*fresh(16, 29), prefix, alphabet=ENGLISH)
        dscheckpoint.load_into(*fresh(16, 29), prefix, alphabet=ENGLISH, drop_source_layers=1)
    finally:
        (directory / "alphabet.txt").unlink()


def rewrite(src, dst, change):
    """A copy of checkpoint `src` as `dst` with its tensors dict changed by `change(tensors)`."""
    reader = tf.train.load_checkpoint(src)
    tensors = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
    change(tensors)
    keys = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(dst), tensor_names=keys, shape_and_slices=[""] * len(keys),
                      tensors=[tf.constant(tensors[k]) for k in keys])
    return str(dst)


def test_refusals_name_the_tensor_the_shapes_and_the_fix(ds_checkpoint, tmp_path):
    _, prefix, _ = ds_checkpoint
    with pytest.raises(UserError) as e:
        dscheckpoint.load_into(*fresh(8, 29), prefix)
    assert "tensor layer_1/weights is [494, 16] in the checkpoint but [494, 8] in the model: the checkpoint " \
           "was trained with n_hidden 16; set n_hidden 16" in str(e.value)
    assert f"tensor {LSTM}/kernel is [32, 64] in the checkpoint but [16, 32]" in str(e.value)

    narrow = rewrite(prefix, tmp_path / "narrow", lambda t: t.update({"layer_1/weights": t["layer_1/weights"][:390]}))
    with pytest.raises(UserError, match=r"layer_1/weights is \[390, 16\] in the checkpoint but \[494, 16\].*390 "
                                        r"input rows are not DeepSpeech 0.9.x's context window of 19 frames x 26"):
        dscheckpoint.load_into(*fresh(16, 29), narrow)

    missing = rewrite(prefix, tmp_path / "missing", lambda t: [t.pop("layer_5/bias"), t.pop(f"{LSTM}/kernel")])
    with pytest.raises(UserError, match=rf"'Key \.\.\. not found in checkpoint'\): layer_5/bias, {LSTM}/kernel"):
        dscheckpoint.load_into(*fresh(16, 29), missing)
    net, opt = fresh(16, 29)
    dscheckpoint.load_into(net, opt, missing, drop_source_layers=3)  # both re-initialized: nothing missing

    with pytest.raises(UserError, match="layer_1/LayerNorm/beta.*trained without layer_norm: set layer_norm false"):
        dscheckpoint.load_into(*fresh(16, 29, layer_norm=True), prefix)
    ln = rewrite(prefix, tmp_path / "ln", lambda t: t.update({"layer_1/LayerNorm/beta": np.zeros(16, np.float32)}))
    with pytest.raises(UserError, match="trained with layer_norm; set layer_norm true"):
        dscheckpoint.load_into(*fresh(16, 29), ln)

    net, opt = fresh(16, 29)
    trained = tf.train.Checkpoint(model=net, optimizer=opt).write(str(tmp_path / "objects" / "ckpt"))
    with pytest.raises(UserError, match="a dsflow checkpoint .*dsflow export-checkpoint"):
        dscheckpoint.load_into(*fresh(16, 29), trained)
    with pytest.raises(UserError, match="neither a checkpoint folder nor a checkpoint prefix"):
        dscheckpoint.load_into(*fresh(16, 29), tmp_path / "nothing")


def test_adam_step_is_global_step_checked_against_the_beta_powers(ds_checkpoint, tmp_path, caplog):
    _, prefix, values = ds_checkpoint
    assert values["global_step"] == 1 and values["beta1_power"] == np.float32(0.9) ** 2  # TF1: beta^(t+1)
    no_step = rewrite(prefix, tmp_path / "no_step", lambda t: t.pop("global_step"))
    net, opt = fresh(16, 29)
    with caplog.at_level(logging.WARNING, logger="dsflow"):
        assert dscheckpoint.load_into(net, opt, no_step).global_step == 1
    assert "no global_step; Adam's step 1 taken from beta1_power" in caplog.text
    caplog.clear()
    reset = rewrite(prefix, tmp_path / "reset", lambda t: t.update(beta2_power=np.float32(0.999)))
    with caplog.at_level(logging.WARNING, logger="dsflow"):
        assert dscheckpoint.load_into(*fresh(16, 29), reset).global_step == 1
    assert "beta2_power is Adam step 0.0 with beta 0.999, but global_step is 1" in caplog.text


def test_cudnn_checkpoint_needs_load_cudnn_for_its_lstm_moments(ds_checkpoint, tmp_path, caplog):
    """A --train_cudnn checkpoint: canonical LSTM weights, LSTM moments only for the opaque kernel."""
    _, prefix, values = ds_checkpoint

    def cudnn(t):
        for s in ("", "/Adam", "/Adam_1"):
            t[dscheckpoint.OPAQUE + s] = np.ones(100, np.float32)
        for v in ("kernel", "bias"):
            for s in ("/Adam", "/Adam_1"):
                del t[f"{LSTM}/{v}{s}"]

    path = rewrite(prefix, tmp_path / "cudnn", cudnn)
    with pytest.raises(UserError, match="trained with --train_cudnn.*Set load_cudnn true"):
        dscheckpoint.load_into(*fresh(16, 29), path)
    net, opt = fresh(16, 29)
    with caplog.at_level(logging.WARNING, logger="dsflow"):
        state = dscheckpoint.load_into(net, opt, path, load_cudnn=True)
    assert state.fresh_moments == [f"{LSTM}/kernel", f"{LSTM}/bias"] and "start at zero" in caplog.text
    np.testing.assert_array_equal(net.lstm.kernel.numpy(), values[f"{LSTM}/kernel"])
    np.testing.assert_array_equal(np.asarray(dscheckpoint._moments(opt, net.layer_2.bias)[1]),
                                  values["layer_2/bias/Adam_1"])
    dscheckpoint.load_into(*fresh(16, 29), path, drop_source_layers=3)  # LSTM dropped: no moments needed
    opaque_only = rewrite(path, tmp_path / "opaque", lambda t: t.pop(f"{LSTM}/kernel"))
    with pytest.raises(UserError, match="only in cuDNN's opaque layout .* which dsflow does not convert"):
        dscheckpoint.load_into(*fresh(16, 29), opaque_only, load_cudnn=True)


def test_find_follows_deepspeech_load_rules(tmp_path, ds_checkpoint):
    _, prefix, _ = ds_checkpoint
    net, opt = fresh(16, 29)
    d = tmp_path / "ck"
    with pytest.raises(UserError, match="neither a checkpoint folder"):
        dscheckpoint.find(d)
    d.mkdir()
    assert dscheckpoint.find(d, "auto", training=True) is None  # DeepSpeech's load_train auto: then init
    assert dscheckpoint.find(d, "init", training=True) is None
    with pytest.raises(UserError, match="no best_dev_checkpoint or checkpoint state file"):
        dscheckpoint.find(d, "auto")  # load_evaluate auto never initializes
    dscheckpoint.write(d, net, opt)  # train-0, `checkpoint`
    opt.iterations.assign(5)
    dscheckpoint.write(d, net, opt, best_dev=True)  # best_dev-5
    assert dscheckpoint.find(d) == str(d / "best_dev-5")
    assert dscheckpoint.find(d, "last") == str(d / "train-0")
    assert dscheckpoint.find(d / "train-0", "best") == str(d / "train-0")  # an explicit prefix
    # A state file written by DeepSpeech on another machine (absolute paths): the file beside it is used
    (d / "checkpoint").write_text('model_checkpoint_path: "/home/someone/ckpt/train-0"\n')
    assert dscheckpoint.find(d, "last") == str(d / "train-0")
    (d / "best_dev_checkpoint").unlink()
    assert dscheckpoint.find(d, "auto") == str(d / "train-0")
    with pytest.raises(UserError, match="no best_dev_checkpoint state file"):
        dscheckpoint.find(d, "best")
    # and DeepSpeech's own Saver state file
    assert dscheckpoint.find(prefix.rsplit("/", 1)[0], "last") == prefix


def test_export_checkpoint_command_converts_a_dsflow_training_run(tmp_path):
    from dsflow import features

    feats = tmp_path / "features"
    features.write_features(LDC / "ldc93s1.csv", feats)
    out = tmp_path / "dsflow"
    assert main(["train", "--train_features", str(feats), "--dev_features", str(feats), "--alphabet_config_path",
                 str(DATA / "alphabet.txt"), "--work_dir", str(tmp_path / "work"), "--checkpoint_dir", str(out),
                 "--checkpoint_secs", "0", "--n_hidden", "16", "--epochs", "2", "--learning_rate", "0.002"]) == 0
    assert main(["export-checkpoint", "--checkpoint_dir", str(out), "--output_dir", str(tmp_path / "ds")]) == 0
    ds = tmp_path / "ds"
    assert sorted(p.name for p in ds.iterdir()) == ["alphabet.txt", "best_dev-2.data-00000-of-00001",
                                                    "best_dev-2.index", "best_dev_checkpoint", "checkpoint",
                                                    "flags.txt"]
    assert "--n_hidden=16\n" in (ds / "flags.txt").read_text()
    trained = checkpoints.load_model(out, "best")
    reader = tf.train.load_checkpoint(trained.checkpoint)
    net, opt = fresh(16, 29)
    state = dscheckpoint.load_into(net, opt, ds, "last", alphabet=ENGLISH)
    assert state.global_step == 2 and state.learning_rate == np.float32(0.002)
    for a, b in zip(trained.trainable_variables, net.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    stored = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k.startswith("optimizer/_var")}
    assert len(stored) == 2 * 12
    ours = [np.asarray(v) for v in opt.variables[2:]]
    for value in stored.values():  # every stored Adam moment is one of ours, bit for bit
        assert any(o.shape == value.shape and np.array_equal(o, value) for o in ours)

    assert main(["export-checkpoint", "--checkpoint_dir", str(out), "--output_dir", str(ds), "--load_evaluate",
                 "last"]) == 0  # replaces the folder
    assert sorted(p.name for p in ds.iterdir()) == ["alphabet.txt", "checkpoint", "flags.txt",
                                                    "train-2.data-00000-of-00001", "train-2.index"]


def test_release_sized_checkpoint_loads_and_trains(tmp_path):
    """n_hidden 2048, 29 classes, written by DeepSpeech's graph after one Adam step (like the release checkpoint:
    Adam slots, global_step, learning_rate): dsflow computes the same loss on it and trains a step.
    About 16 s and 1.8 GB (two 570 MB copies of weights + moments)."""
    # 16 frames of LDC93S1, "she": DeepSpeech's BlockLSTMGrad at n_hidden 2048 takes over a minute for all 146
    features, lengths = ldc_batch()[0][:1, :16], np.array([16], np.int32)
    labels = np.array([ENGLISH.encode("she")], np.int32)
    label_lengths = np.array([3], np.int32)
    ds = DeepSpeechTF1(2048, 29, learning_rate=0.0001)
    feed = ds.feed(features, lengths, labels)
    ds.session.run(ds.train_op, feed)
    ds_loss = ds.session.run(ds.loss, feed)
    prefix = ds.save(str(tmp_path / "release" / "best_dev"), latest_filename="best_dev_checkpoint")
    ds.session.close()
    del ds

    net, opt = fresh(2048, 29)
    assert net.count_params() == 47_224_861
    state = dscheckpoint.load_into(net, opt, tmp_path / "release", alphabet=ENGLISH)
    assert state.path == prefix and state.global_step == 1 and len(state.loaded) == 12
    gradients, apply, _ = step_functions(net, opt, None, tf.float32)
    batch = [tf.constant(a) for a in (features, lengths, labels, label_lengths)]
    before = net.layer_6.bias.numpy()
    losses, grads = gradients(*batch, tf.constant([1, 2], tf.int64))
    np.testing.assert_allclose(losses.numpy()[0], ds_loss, rtol=1e-3)
    apply(grads)
    assert int(opt.iterations.numpy()) == 2 and not np.array_equal(net.layer_6.bias.numpy(), before)
