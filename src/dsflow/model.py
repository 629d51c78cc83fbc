"""DeepSpeech 0.9.3's acoustic model (train.py `create_model`), its CTC loss and optimizer, in TensorFlow 2.

The network, time-major as in DeepSpeech:

  features [B,T,26] -> 19x26 context windows (9 zero frames each side; = DeepSpeech's identity conv1d,
  SAME padding) -> layer_1..layer_3 (dense, min(relu, relu_clip), optional layer norm, dropout)
  -> one unidirectional LSTM of n_hidden (forget_bias 0) -> layer_5 (like 1..3) -> layer_6 (linear,
  alphabet size + 1 outputs, CTC blank LAST) -> logits [T,B,C].

Weights: Glorot-uniform (DeepSpeech's VarianceScaling(1, fan_avg, uniform)), zero biases. The LSTM kernel
is [2*n_hidden, 4*n_hidden] (input rows, then recurrent rows) with DeepSpeech's LSTMBlockFusedCell gate
order (i, c~, f, o), so weights map 1:1 onto DeepSpeech's `cudnn_compatible_lstm_cell/{kernel,bias}`.
The LSTM runs as a loop whose input projection is one GEMM over all frames; only h @ W_h is inside it.
"""

from __future__ import annotations

import math

import tensorflow as tf

from dsflow.mfcc import N_INPUT

N_CONTEXT = 9  # frames of context on each side: DeepSpeech util/config.py n_context
WINDOW = 2 * N_CONTEXT + 1
LN_EPSILON = 1e-12  # tf.contrib.layers.layer_norm's variance_epsilon


def dropout_rates(dropout_rate: float, rate2: float = -1.0, rate3: float = -1.0, rate6: float = -1.0) -> tuple:
    """DeepSpeech's six dropout slots: rates 2/3/6 of -1 mean `dropout_rate`; slots 4 and 5 exist but are
    never applied (dropout_rate4/5), so they are 0 here."""
    same = lambda r: dropout_rate if r < 0 else r  # noqa: E731
    return (dropout_rate, same(rate2), same(rate3), 0.0, 0.0, same(rate6))


def glorot(shape, seed: int) -> tf.Tensor:
    return tf.keras.initializers.VarianceScaling(1.0, "fan_avg", "uniform", seed=seed)(shape, dtype="float32")


def context_windows(features):
    """features [B, T, 26] -> time-major windows [T, B, 494]: frame t sees frames t-9..t+9 (zeros beyond the
    edges), flattened window-major; = DeepSpeech's conv1d with eye(494) reshaped to [19, 26, 494], SAME."""
    x = tf.transpose(features, [1, 0, 2])
    t = tf.shape(x)[0]
    x = tf.pad(x, [[N_CONTEXT, N_CONTEXT], [0, 0], [0, 0]])
    return tf.concat([x[k:k + t] for k in range(WINDOW)], axis=-1)


class Dense(tf.Module):
    """DeepSpeech's `dense()`: x @ weights + bias, then min(relu, relu_clip), layer norm, dropout."""

    def __init__(self, name: str, n_in: int, n_out: int, seed: int, relu: bool = True, layer_norm: bool = False):
        super().__init__(name=name)
        self.relu, self.layer_norm = relu, layer_norm
        self.weights = tf.Variable(glorot([n_in, n_out], seed), name="weights")
        self.bias = tf.Variable(tf.zeros([n_out]), name="bias")
        if layer_norm:  # tf.contrib.layers.layer_norm: LayerNorm/beta (zeros), LayerNorm/gamma (ones)
            self.beta = tf.Variable(tf.zeros([n_out]), name="LayerNorm/beta")
            self.gamma = tf.Variable(tf.ones([n_out]), name="LayerNorm/gamma")

    def __call__(self, x, relu_clip: float, dropout: float = 0.0, seed=None, dtype=tf.float32):
        y = tf.matmul(x, tf.cast(self.weights, dtype)) + tf.cast(self.bias, dtype)
        if self.relu:
            y = tf.minimum(tf.nn.relu(y), tf.cast(relu_clip, dtype))
        if self.layer_norm:
            y32 = tf.cast(y, tf.float32)
            mean, var = tf.nn.moments(y32, axes=[-1], keepdims=True)
            y = tf.cast(tf.nn.batch_normalization(y32, mean, var, self.beta, self.gamma, LN_EPSILON), dtype)
        if dropout > 0.0:
            y = tf.nn.experimental.stateless_dropout(y, rate=dropout, seed=seed)
        return y


def lstm_loop(xw, w_h):
    """The recurrent part of the LSTM: xw [T, B, 4H] float32 (x @ W_x + bias for every frame), w_h [H, 4H]
    (compute dtype) -> h [T, B, H] float32, from a zero state.

    Its gradient is written out: a reverse loop yields dz for every step (only dz_t @ W_h^T inside it),
    then dW_h = h_prev^T @ dz is ONE GEMM over all frames. Autodiff of the loop instead adds h^T dz_t into
    a [H, 4H] accumulator at every step, which made training 1.3x slower (bench/bench_train.py).
    """
    dtype, n = w_h.dtype, w_h.shape[0]

    @tf.custom_gradient
    def run(xw, w_h):
        b = tf.shape(xw)[1]
        zeros, zeros4 = tf.zeros([b, n]), tf.zeros([b, 4 * n])

        def step(state, xw_t):
            c, h, _ = state
            z = xw_t + tf.cast(tf.matmul(tf.cast(h, dtype), w_h), tf.float32)
            i, j, f, o = tf.split(z, 4, axis=1)
            i, j, f, o = tf.sigmoid(i), tf.tanh(j), tf.sigmoid(f), tf.sigmoid(o)
            c = f * c + i * j
            return c, o * tf.tanh(c), tf.concat([i, j, f, o], 1)

        c, h, gates = tf.scan(step, xw, initializer=(zeros, zeros, zeros4))

        def grad(dh_out):
            c_prev = tf.concat([zeros[None], c[:-1]], 0)
            h_prev = tf.concat([zeros[None], h[:-1]], 0)
            w_t = tf.transpose(w_h)

            def back(carry, inputs):
                dh_next, dc_next, _ = carry
                dh_t, c_t, c_p, g = inputs
                i, j, f, o = tf.split(g, 4, axis=1)
                dh = dh_t + dh_next
                tanh_c = tf.tanh(c_t)
                dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
                dz = tf.concat([dc * j * i * (1 - i), dc * i * (1 - j * j), dc * c_p * f * (1 - f),
                                dh * tanh_c * o * (1 - o)], 1)
                return tf.cast(tf.matmul(tf.cast(dz, dtype), w_t), tf.float32), dc * f, dz

            _, _, dz = tf.scan(back, (dh_out, c, c_prev, gates), initializer=(zeros, zeros, zeros4), reverse=True)
            dw_h = tf.matmul(tf.reshape(tf.cast(h_prev, dtype), [-1, n]), tf.reshape(tf.cast(dz, dtype), [-1, 4 * n]),
                             transpose_a=True)
            return dz, dw_h

        return h, grad

    return run(xw, w_h)


class LSTM(tf.Module):
    """One LSTM layer like DeepSpeech's LSTMBlockFusedCell(forget_bias=0): zero initial state,
    z = [x, h] @ kernel + bias, gates (i, c~, f, o), c = sig(f) c + sig(i) tanh(c~), h = sig(o) tanh(c)."""

    def __init__(self, n_in: int, n_units: int, seed: int):
        super().__init__(name="lstm")
        self.n_in, self.n_units = n_in, n_units
        self.kernel = tf.Variable(glorot([n_in + n_units, 4 * n_units], seed), name="kernel")
        self.bias = tf.Variable(tf.zeros([4 * n_units]), name="bias")

    def __call__(self, x, dtype=tf.float32):
        """x [T, B, n_in] -> h [T, B, n_units] (float32)."""
        t, b = tf.shape(x)[0], tf.shape(x)[1]
        kernel = tf.cast(self.kernel, dtype)
        # Input projection of every frame at once: one GEMM over T*B rows; only h @ W_h is in the loop.
        xw = tf.matmul(tf.reshape(tf.cast(x, dtype), [-1, self.n_in]), kernel[: self.n_in])
        xw = tf.reshape(tf.cast(xw, tf.float32) + self.bias, [t, b, 4 * self.n_units])
        return lstm_loop(xw, kernel[self.n_in:])


class DeepSpeech(tf.Module):
    def __init__(self, n_hidden: int, n_classes: int, layer_norm: bool = False, relu_clip: float = 20.0,
                 seed: int = 4568):
        """`n_classes` = alphabet size + 1 (blank, last). `seed` makes the initial weights reproducible."""
        super().__init__(name="deepspeech")
        self.n_hidden, self.n_classes, self.relu_clip = n_hidden, n_classes, relu_clip
        n_window = N_INPUT * WINDOW
        self.layer_1 = Dense("layer_1", n_window, n_hidden, seed + 1, layer_norm=layer_norm)
        self.layer_2 = Dense("layer_2", n_hidden, n_hidden, seed + 2, layer_norm=layer_norm)
        self.layer_3 = Dense("layer_3", n_hidden, n_hidden, seed + 3, layer_norm=layer_norm)
        self.lstm = LSTM(n_hidden, n_hidden, seed + 4)
        self.layer_5 = Dense("layer_5", n_hidden, n_hidden, seed + 5, layer_norm=layer_norm)
        self.layer_6 = Dense("layer_6", n_hidden, n_classes, seed + 6, relu=False)

    def count_params(self) -> int:
        return sum(math.prod(v.shape) for v in self.trainable_variables)

    def __call__(self, features, dropout=None, seed=None, dtype=tf.float32):
        """features float32 [B, T, 26] (zero-padded) -> logits float32 [T, B, n_classes] (time-major).

        dropout: DeepSpeech's 6 rates (see `dropout_rates`) when training, None at evaluation.
        seed: int [2] tensor for the dropout masks (stateless: the same seed gives the same masks).
        dtype: compute dtype (tf.bfloat16 for mixed precision; weights stay float32).
        """
        x = context_windows(features)  # [T, B, 494]
        t, b = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.cast(tf.reshape(x, [-1, N_INPUT * WINDOW]), dtype)  # [T*B, 494]
        rates = dropout or (0.0,) * 6

        def drop_seed(slot):
            return None if seed is None else tf.random.experimental.stateless_fold_in(seed, slot)

        x = self.layer_1(x, self.relu_clip, rates[0], drop_seed(0), dtype)
        x = self.layer_2(x, self.relu_clip, rates[1], drop_seed(1), dtype)
        x = self.layer_3(x, self.relu_clip, rates[2], drop_seed(2), dtype)
        x = self.lstm(tf.reshape(x, [t, b, self.n_hidden]), dtype)
        x = tf.cast(tf.reshape(x, [-1, self.n_hidden]), dtype)
        x = self.layer_5(x, self.relu_clip, rates[5], drop_seed(5), dtype)
        x = self.layer_6(x, self.relu_clip, 0.0, None, dtype)
        return tf.cast(tf.reshape(x, [t, b, self.n_classes]), tf.float32)


def ctc_loss(logits, feature_lengths, labels, label_lengths):
    """Per-utterance CTC loss [B] as DeepSpeech computes it (tfv1.nn.ctc_loss: time-major logits, blank
    last, ctc_merge_repeated, no length normalization). labels: int [B, L] padded with -1.

    An utterance whose transcript cannot fit its frames (labels + adjacent repeats > frames) has loss +inf,
    its true value (DeepSpeech's op raised "Not enough time for target transition sequence" instead).
    """
    labels = tf.cast(labels, tf.int32)
    mask = labels >= 0
    sparse = tf.SparseTensor(tf.where(mask), tf.boolean_mask(labels, mask), tf.shape(labels, out_type=tf.int64))
    loss = tf.compat.v1.nn.ctc_loss(sparse, logits, feature_lengths, ignore_longer_outputs_than_inputs=True)
    repeats = tf.reduce_sum(tf.cast((labels[:, 1:] == labels[:, :-1]) & mask[:, 1:], tf.int32), axis=1)
    fits = label_lengths + repeats <= feature_lengths
    return tf.where(fits, loss, tf.constant(math.inf, loss.dtype))


def adam(learning_rate: float, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8):
    """DeepSpeech's AdamOptimizer(lr, beta1, beta2, epsilon); the learning rate is a variable in its state."""
    import keras

    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta1, beta_2=beta2, epsilon=epsilon)


def step_functions(net, opt, rates, dtype):
    """The compiled steps: gradients(batch..., seed) -> (per-utterance losses, gradients) without applying
    them (the caller skips the update on a non-finite loss), apply(gradients), evaluate(batch...) -> losses."""
    batch = [tf.TensorSpec([None, None, N_INPUT], tf.float32), tf.TensorSpec([None], tf.int32),
             tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=batch + [tf.TensorSpec([2], tf.int64)])
    def gradients(features, feature_lengths, labels, label_lengths, seed):
        with tf.GradientTape() as tape:
            logits = net(features, rates, seed, dtype)
            losses = ctc_loss(logits, feature_lengths, labels, label_lengths)
            loss = tf.reduce_mean(losses)  # DeepSpeech: mean over the batch, no length normalization
        return losses, tape.gradient(loss, net.trainable_variables)

    @tf.function
    def apply(grads):
        opt.apply_gradients(zip(grads, net.trainable_variables))

    @tf.function(input_signature=batch)
    def evaluate(features, feature_lengths, labels, label_lengths):
        return ctc_loss(net(features, None, None, dtype), feature_lengths, labels, label_lengths)

    return gradients, apply, evaluate
