import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from dsflow import model  # noqa: E402
from dsflow.alphabet import Alphabet  # noqa: E402
from dsflow.decode import greedy  # noqa: E402
from tests.conftest import DATA  # noqa: E402

ENGLISH = Alphabet.from_file(DATA / "alphabet.txt")


def test_parameter_count_equals_deepspeech():
    assert model.DeepSpeech(2048, len(ENGLISH) + 1).count_params() == 47_224_861
    assert model.DeepSpeech(100, len(ENGLISH) + 1).count_params() == 163_129
    # layer norm adds gamma and beta after layers 1, 2, 3 and 5
    assert model.DeepSpeech(100, 29, layer_norm=True).count_params() == 163_129 + 4 * 2 * 100


def test_initial_weights_are_glorot_uniform_zero_bias_and_seeded():
    a, b, c = model.DeepSpeech(64, 29, seed=1), model.DeepSpeech(64, 29, seed=1), model.DeepSpeech(64, 29, seed=2)
    w = a.lstm.kernel.numpy()  # [2H, 4H]: limit sqrt(6 / (fan_in + fan_out)) over the whole kernel
    limit = np.sqrt(6 / (128 + 256))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit
    assert not a.layer_1.bias.numpy().any() and not a.lstm.bias.numpy().any()
    assert np.array_equal(a.layer_2.weights.numpy(), b.layer_2.weights.numpy())
    assert not np.array_equal(a.layer_2.weights.numpy(), c.layer_2.weights.numpy())
    assert not np.array_equal(a.layer_2.weights.numpy(), a.layer_3.weights.numpy())


def test_context_windows_equal_deepspeech_identity_conv1d():
    x = tf.random.normal([3, 40, 26], seed=1)
    # DeepSpeech's create_overlapping_windows
    eye = np.eye(19 * 26).reshape(19, 26, 19 * 26)
    ref = tf.nn.conv1d(input=x, filters=tf.constant(eye, tf.float32), stride=1, padding="SAME")  # [B, T, 494]
    np.testing.assert_array_equal(tf.transpose(model.context_windows(x), [1, 0, 2]).numpy(), ref.numpy())


def test_lstm_equals_deepspeech_fused_lstm_op():
    lstm = model.LSTM(16, 32, seed=3)
    lstm.bias.assign(tf.random.normal([128], seed=4))
    x = tf.random.normal([25, 4, 16], seed=5)
    zeros = tf.zeros([4, 32])
    ref = tf.raw_ops.BlockLSTM(  # what LSTMBlockFusedCell(forget_bias=0) runs
        seq_len_max=tf.constant(25, tf.int64), x=x, cs_prev=zeros, h_prev=zeros, w=lstm.kernel,
        wci=tf.zeros([32]), wcf=tf.zeros([32]), wco=tf.zeros([32]), b=lstm.bias,
        forget_bias=0.0, cell_clip=-1.0, use_peephole=False)
    np.testing.assert_allclose(lstm(x).numpy(), ref.h.numpy(), atol=1e-5)


def test_logits_of_a_frame_do_not_depend_on_batch_padding():
    """Padding is zeros, like SAME padding of the windows, and the LSTM runs forward only."""
    net = model.DeepSpeech(48, 29)
    x = tf.random.normal([1, 30, 26], seed=6)
    padded = tf.concat([tf.pad(x, [[0, 0], [0, 20], [0, 0]]), tf.random.normal([1, 50, 26])], axis=0)
    alone, batched = net(x).numpy(), net(padded).numpy()
    assert alone.shape == (30, 1, 29) and batched.shape == (50, 2, 29)
    np.testing.assert_allclose(batched[:30, 0], alone[:, 0], atol=1e-5)


def test_dropout_slots_and_seeds():
    assert model.dropout_rates(0.05) == (0.05, 0.05, 0.05, 0.0, 0.0, 0.05)
    assert model.dropout_rates(0.1, 0.2, -1, 0.3) == (0.1, 0.2, 0.1, 0.0, 0.0, 0.3)
    net = model.DeepSpeech(64, 29)
    x = tf.random.normal([2, 20, 26], seed=7)
    rates = model.dropout_rates(0.3)
    seed = tf.constant([1, 2], tf.int64)
    np.testing.assert_array_equal(net(x).numpy(), net(x).numpy())  # no dropout at evaluation
    a, b = net(x, rates, seed).numpy(), net(x, rates, seed).numpy()
    np.testing.assert_array_equal(a, b)  # stateless: same seed, same masks
    assert not np.allclose(a, net(x).numpy())
    assert not np.allclose(a, net(x, rates, tf.constant([1, 3], tf.int64)).numpy())


def test_relu_clip():
    dense = model.Dense("d", 4, 3, seed=1)
    dense.weights.assign(tf.fill([4, 3], 10.0))
    y = dense(tf.constant([[1.0, 1.0, 1.0, 1.0], [-1.0, 0.0, 0.0, 0.0]]), relu_clip=20.0).numpy()
    np.testing.assert_array_equal(y, [[20, 20, 20], [0, 0, 0]])


def test_layer_norm_is_contrib_layer_norm():
    dense = model.Dense("d", 8, 6, seed=1, layer_norm=True)
    dense.gamma.assign(tf.range(1.0, 7.0))
    dense.beta.assign(tf.fill([6], 0.5))
    x = tf.random.normal([5, 8], seed=2)
    h = tf.minimum(tf.nn.relu(x @ dense.weights), 20.0).numpy()
    ref = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-12) * np.arange(1, 7) + 0.5
    np.testing.assert_allclose(dense(x, relu_clip=20.0).numpy(), ref, rtol=1e-4, atol=1e-4)


def test_ctc_loss_per_utterance_blank_last_and_infeasible_is_inf():
    logits = tf.random.normal([6, 4, 5], seed=8)  # T=6, B=4, 4 labels + blank
    labels = tf.constant([[0, 1, -1, -1], [2, 2, 2, -1], [0, 1, 2, 3], [3, 3, 3, -1]])
    label_lengths = tf.constant([2, 3, 4, 3])
    feature_lengths = tf.constant([6, 5, 3, 6])  # row 1: 3 labels + 2 repeats = 5 fits; row 2: 4 > 3
    loss = model.ctc_loss(logits, feature_lengths, labels, label_lengths).numpy()
    ref = tf.nn.ctc_loss(tf.maximum(labels, 0), logits, label_lengths, feature_lengths, logits_time_major=True,
                         blank_index=4).numpy()
    assert np.isinf(loss[2]) and loss[2] > 0
    np.testing.assert_allclose(loss[[0, 1, 3]], ref[[0, 1, 3]], rtol=1e-4)
    short = model.ctc_loss(logits, tf.constant([6, 4, 6, 6]), labels, label_lengths).numpy()
    assert np.isinf(short[1])  # "aaa" needs a blank between repeats: 5 frames, 4 given


def test_mixed_precision_close_to_float32():
    net = model.DeepSpeech(64, 29)
    x = tf.random.normal([2, 30, 26], seed=9)
    full, half = net(x).numpy(), net(x, dtype=tf.bfloat16).numpy()
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=0.05 * np.abs(full).max())


def test_greedy_merges_repeats_and_drops_blank_last():
    abc = Alphabet(["a", "b", " "])  # blank = 3
    frames = [0, 0, 3, 0, 1, 1, 2, 3, 3, 1, 0]
    logits = np.eye(4)[frames]
    assert greedy(logits, len(frames), abc) == "aab ba"
    assert greedy(logits, 4, abc) == "aa"  # only the first `length` frames
    assert greedy(logits, 0, abc) == ""
    with pytest.raises(ValueError, match="classes"):
        greedy(np.eye(5)[frames], len(frames), abc)


def test_lstm_gradient_equals_autodiff_of_the_same_loop():
    lstm = model.LSTM(16, 32, seed=3)
    lstm.bias.assign(tf.random.normal([128], seed=10))
    x = tf.random.normal([20, 3, 16], seed=11)
    upstream = tf.random.normal([20, 3, 32], seed=12)

    def autodiff_lstm(x):  # the same recurrence, differentiated by TensorFlow
        xw = tf.reshape(tf.reshape(x, [-1, 16]) @ lstm.kernel[:16], [20, 3, 128]) + lstm.bias

        def step(state, xw_t):
            c, h = state
            i, j, f, o = tf.split(xw_t + h @ lstm.kernel[16:], 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(j)
            return c, tf.sigmoid(o) * tf.tanh(c)

        return tf.scan(step, xw, initializer=(tf.zeros([3, 32]), tf.zeros([3, 32])))[1]

    grads = []
    for fn in (lstm, autodiff_lstm):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fn(x) * upstream)
        grads.append(tape.gradient(loss, [x, lstm.kernel, lstm.bias]))
    for ours, ref in zip(*grads):
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
