"""DeepSpeech 0.9.x TF1 checkpoints (train.py, util/checkpoints.py): this module owns the format. It reads one into
dsflow's model (dsflow.model.DeepSpeech) and Adam (keras), writes dsflow's state as one, and `dsflow
export-checkpoint` converts a folder published by `dsflow train`.

A checkpoint is TF1 name-based: `<prefix>.index` + `<prefix>.data-00000-of-00001`, named `train-<global_step>`
(state file `checkpoint`) or `best_dev-<global_step>` (state file `best_dev_checkpoint`), flags.txt beside it.
Its tensors, by DeepSpeech's variable names (n = n_hidden):
  layer_{1,2,3,5,6}/weights [in, out] and /bias [out]   layer_1 has 494 = 19 frames x 26 MFCC input rows,
                                                        layer_6 alphabet size + 1 columns (blank last)
  layer_{1,2,3,5}/LayerNorm/{beta,gamma} [n]            only with layer_norm
  LSTM/kernel [2n, 4n], LSTM/bias [4n]                  LSTM = cudnn_lstm/rnn/multi_rnn_cell/cell_0/
                                                        cudnn_compatible_lstm_cell; rows x then h, gates i c~ f o
  <each of the above>/Adam, /Adam_1                     Adam's first and second moments
  beta1_power, beta2_power (float32)                    beta^(t+1) after t Adam steps
  global_step (int64), learning_rate (float32)          steps taken; DeepSpeech's stored learning rate
A --train_cudnn checkpoint also holds `cudnn_lstm/opaque_kernel` and its moments in cuDNN's opaque layout; the
canonical kernel/bias above are saved beside it (CudnnLSTM's saveable) and are what is read here.

Keras' Adam: momentum = `/Adam`, velocity = `/Adam_1`, iterations = global_step. TF1's AdamOptimizer advances
global_step and the beta powers in the same apply_gradients, so after t steps beta1_power = beta1^(t+1): the power
Keras uses at its next step (beta_1^(iterations+1)). The powers are written so and read only to check that.
"""

from __future__ import annotations

import argparse
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dsflow import UserError, flags
from dsflow.atomic import atomic_dir, write_text
from dsflow.log import log

LSTM = "cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell"
OPAQUE = "cudnn_lstm/opaque_kernel"  # CudnnLSTM's own variable (--train_cudnn)
DROP_ORDER = ("2", "3", "lstm", "5", "6")  # util/checkpoints.py: drop_source_layers N drops the last N
STATE_FILES = {"best": "best_dev_checkpoint", "last": "checkpoint"}
WINDOW_ROWS = 494  # 19 x 26: layer_1's input rows
# DeepSpeech 0.9.3 flags written to flags.txt when the run's flags have them (absl flagfile format); paths are left
# out (they belong to the machine that trained).
DS_FLAGS = {int: ("epochs", "train_batch_size", "dev_batch_size", "n_hidden", "random_seed", "checkpoint_secs",
                  "max_to_keep", "es_epochs", "plateau_epochs", "drop_source_layers"),
            float: ("dropout_rate", "dropout_rate2", "dropout_rate3", "dropout_rate6", "relu_clip", "beta1", "beta2",
                    "epsilon", "learning_rate", "es_min_delta", "plateau_reduction"),
            bool: ("layer_norm", "automatic_mixed_precision", "early_stop", "reduce_lr_on_plateau",
                   "force_initialize_learning_rate", "train_cudnn", "load_cudnn", "bytes_output_mode"),
            str: ("load_train", "load_evaluate")}


def variables(net) -> dict:
    """DeepSpeech's variable name -> the dsflow model's tf.Variable, for every trainable variable."""
    out = {}
    for name in ("layer_1", "layer_2", "layer_3", "layer_5", "layer_6"):
        layer = getattr(net, name)
        out[f"{name}/weights"], out[f"{name}/bias"] = layer.weights, layer.bias
        if layer.layer_norm:
            out[f"{name}/LayerNorm/beta"], out[f"{name}/LayerNorm/gamma"] = layer.beta, layer.gamma
    out[f"{LSTM}/kernel"], out[f"{LSTM}/bias"] = net.lstm.kernel, net.lstm.bias
    return out


def dropped(name: str, drop_source_layers: int) -> bool:
    """DeepSpeech's rule, on any variable name (Adam moments and beta powers included): re-initialized if it
    contains one of the last N substrings of ('2', '3', 'lstm', '5', '6'). '2' also matches `beta2_power`."""
    n = min(drop_source_layers, 5)
    return n > 0 and any(s in name for s in DROP_ORDER[-n:])


def _moments(opt, var):
    """Keras Adam's (momentum, velocity) of `var` (the optimizer must be built on the model's variables)."""
    i = opt._get_variable_index(var)
    return opt._momentums[i], opt._velocities[i]


def _state_text(name: str) -> str:
    """tf.train's CheckpointState text format, with a path relative to its folder (the folder can move)."""
    return f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n'


def _from_state_file(directory: Path, state_file: str) -> str | None:
    import tensorflow as tf

    if not (directory / state_file).exists():
        return None
    try:
        state = tf.train.get_checkpoint_state(str(directory), state_file)
    except Exception as e:  # a malformed text proto
        raise UserError(f"{directory / state_file}: not a checkpoint state file ({e})") from None
    if state is None or not state.model_checkpoint_path:
        return None
    path = state.model_checkpoint_path
    if not Path(path + ".index").exists():
        # DeepSpeech's Saver wrote absolute paths: a folder copied from another machine still has its files here
        local = directory / Path(path).name
        if not Path(str(local) + ".index").exists():
            raise UserError(f"{directory / state_file} names {path}, which does not exist (nor {local})")
        log.info("%s names %s; using %s", directory / state_file, path, local)
        path = str(local)
    return path


def find(path: str | Path, which: str = "auto", training: bool = False) -> str | None:
    """The checkpoint prefix to read: `path` itself when it is a prefix (`path`.index exists), else from the
    folder's state files by DeepSpeech's rules: best = best_dev_checkpoint, last = checkpoint; auto = best, then
    last (then init when `training`, DeepSpeech's load_train); init -> None (a fresh model)."""
    path = Path(path)
    if Path(f"{path}.index").exists():
        return str(path)
    if which == "init" and training:
        return None
    order = {"auto": ["best", "last"], "best": ["best"], "last": ["last"]}.get(which)
    if order is None:
        raise UserError(f"load={which!r}: expected auto, best, last{' or init' if training else ''}")
    if not path.is_dir():
        raise UserError(f"{path}: neither a checkpoint folder nor a checkpoint prefix ({path}.index does not exist)")
    for method in order:
        prefix = _from_state_file(path, STATE_FILES[method])
        if prefix is not None:
            log.info("loading %s checkpoint %s", "best validating" if method == "best" else "most recent", prefix)
            return prefix
        log.info("%s: no %s", path, STATE_FILES[method])
    if training and which == "auto":
        log.warning("%s: no checkpoint (no best_dev_checkpoint or checkpoint state file); starting from a fresh "
                    "model", path)
        return None
    raise UserError(f"{path}: no {' or '.join(STATE_FILES[m] for m in order)} state file naming a checkpoint")


def fingerprint(prefix: str) -> str:
    """sha256 of the checkpoint's .index file, which holds every tensor's shape and CRC32C: it changes with any
    value, so a training state built on one checkpoint is never resumed on top of another."""
    import hashlib

    return hashlib.sha256(Path(f"{prefix}.index").read_bytes()).hexdigest()


@dataclass
class LoadedState:
    """What `load_into` did. learning_rate is the stored one (None: the checkpoint has none); see `learning_rate`."""
    path: str
    global_step: int
    learning_rate: float | None
    loaded: list = field(default_factory=list)  # DeepSpeech names taken from the checkpoint
    initialized: list = field(default_factory=list)  # left at their fresh values (drop_source_layers)
    fresh_moments: list = field(default_factory=list)  # variables whose Adam moments start at zero


def learning_rate(state: LoadedState | None, flag: float, force_initialize: bool) -> float:
    """DeepSpeech's rule: the stored learning rate wins over --learning_rate, unless there is none (no checkpoint,
    or an old one without it) or --force_initialize_learning_rate."""
    if state is None or state.learning_rate is None or force_initialize:
        return flag
    if not math.isclose(state.learning_rate, flag, rel_tol=1e-6):
        log.info("keeping the checkpoint's learning rate %g, not learning_rate %g (DeepSpeech's rule; "
                 "force_initialize_learning_rate true uses learning_rate)", state.learning_rate, flag)
    return state.learning_rate


def _step_of(power, beta: float) -> float | None:
    """t from beta^(t+1), while the float32 power is a normal number (t < ~830 for 0.9, ~87,000 for 0.999)."""
    import numpy as np

    power = float(power)
    if not np.finfo(np.float32).tiny <= power < 1 or not 0 < beta < 1:
        return None
    return math.log(power) / math.log(beta) - 1


def _problems(shapes, names, n, net, alphabet) -> list[str]:
    """Why the checkpoint does not fit the model (empty: it fits), each naming tensors, shapes and the fix."""
    missing, mismatched = [], []
    for name, var in names.items():
        if dropped(name, n):
            continue
        if name not in shapes:
            missing.append(name)
        elif list(shapes[name]) != var.shape.as_list():
            mismatched.append((name, list(shapes[name]), var.shape.as_list()))
    problems = []
    if missing:
        text = (f"{len(missing)} tensors of the model are not in the checkpoint (DeepSpeech: 'Key ... not found in "
                f"checkpoint'): {', '.join(missing)}")
        if any("/LayerNorm/" in m for m in missing):
            text += "; the checkpoint was trained without layer_norm: set layer_norm false"
        if f"{LSTM}/kernel" in missing and OPAQUE in shapes:
            text += (f"; the LSTM is only in cuDNN's opaque layout ({OPAQUE}), which dsflow does not convert "
                     "(DeepSpeech --train_cudnn saves the canonical kernel/bias beside it; re-save the checkpoint "
                     "with DeepSpeech 0.9.3)")
        problems.append(text)
    extra_ln = sorted(k for k in shapes if "/LayerNorm/" in k and "Adam" not in k and k not in names
                      and not dropped(k, n))
    if extra_ln:
        problems.append(f"the checkpoint has layer norm tensors ({', '.join(extra_ln)}): it was trained with "
                        "layer_norm; set layer_norm true")
    rows = shapes.get("layer_1/weights", [WINDOW_ROWS])[0]
    ckpt_hidden = shapes.get("layer_1/weights", [None, net.n_hidden])[1]
    for name, theirs, ours in mismatched:
        text = f"tensor {name} is {theirs} in the checkpoint but {ours} in the model"
        if name == "layer_1/weights" and rows != WINDOW_ROWS:
            text += (f": its {rows} input rows are not DeepSpeech 0.9.x's context window of 19 frames x 26 MFCC "
                     f"= {WINDOW_ROWS}; this checkpoint comes from another feature setup and cannot be used "
                     "(layer_1 is never dropped)")
        elif ckpt_hidden != net.n_hidden:
            text += f": the checkpoint was trained with n_hidden {ckpt_hidden}; set n_hidden {ckpt_hidden}"
        elif name.startswith("layer_6/"):
            labels = f"the alphabet {alphabet.source} has {len(alphabet)} labels" if alphabet is not None else \
                f"the model has {net.n_classes - 1} labels"
            text += (f": the checkpoint's output layer has {theirs[-1]} outputs ({theirs[-1] - 1} labels + blank), "
                     f"{labels} (+ blank = {net.n_classes}). Another alphabet needs transfer learning: only the "
                     "output layer's size may change, and only when it is re-initialized: set drop_source_layers 1 "
                     "(or more); or train with the checkpoint's own alphabet")
        problems.append(text)
    return problems


def load_into(net, opt, path: str | Path, which: str = "auto", drop_source_layers: int = 0, alphabet=None,
              load_cudnn: bool = False, training: bool = True) -> LoadedState | None:
    """Load a DeepSpeech checkpoint (a folder, by `which`, or a prefix) into a FRESH model and its Adam optimizer.

    Nothing is assigned unless the whole checkpoint fits (else UserError naming tensors, shapes and the flag that
    fixes it). drop_source_layers N leaves DeepSpeech's chosen variables at the model's fresh values and their Adam
    moments at zero. Adam moments missing from the checkpoint start at zero (with a warning); a --train_cudnn
    checkpoint's LSTM moments are cuDNN-opaque and need load_cudnn (DeepSpeech's rule: they start at zero).
    `alphabet` (dsflow.alphabet.Alphabet) names the file in errors and is compared with an alphabet.txt beside
    the checkpoint. Returns None when `find` chose init (training only): nothing was loaded.
    """
    import numpy as np
    import tensorflow as tf

    prefix = find(path, which, training)
    if prefix is None:
        return None
    if drop_source_layers >= 6:
        log.warning("the checkpoint only has 6 layers, but drop_source_layers is %d: dropping 5 (DeepSpeech's cap)",
                    drop_source_layers)
    n = min(max(drop_source_layers, 0), 5)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f"{prefix}: not a readable TF checkpoint ({e})") from None
    shapes = reader.get_variable_to_shape_map()
    if "model/layer_1/weights/.ATTRIBUTES/VARIABLE_VALUE" in shapes:
        raise UserError(f"{prefix}: a dsflow checkpoint (object-based names), not a DeepSpeech one; convert it with "
                        "`dsflow export-checkpoint`, or resume it with dsflow train's own --work_dir")
    names = variables(net)
    problems = _problems(shapes, names, n, net, alphabet)
    if problems:
        raise UserError(f"{prefix} does not fit the model (n_hidden {net.n_hidden}, {net.n_classes} outputs"
                        f"{', layer_norm' if net.layer_1.layer_norm else ''}, drop_source_layers {n}): "
                        + "; ".join(problems))
    if alphabet is not None and not dropped("layer_6", n):
        beside = Path(prefix).parent / "alphabet.txt"
        if beside.exists():
            from dsflow.alphabet import Alphabet, AlphabetError

            try:
                theirs = Alphabet.from_file(beside)
            except AlphabetError:
                theirs = None
            if theirs is not None and theirs.labels != alphabet.labels:
                raise UserError(f"{prefix}: its output layer was trained for {beside}, whose labels differ from "
                                f"{alphabet.source}'s: set drop_source_layers 1 to re-initialize the output layer "
                                "(transfer learning), or train with that alphabet")
    opaque_moments = OPAQUE in shapes and any(k.startswith(OPAQUE + "/Adam") for k in shapes)
    lstm_moments = [f"{LSTM}/{v}/{s}" for v in ("kernel", "bias") for s in ("Adam", "Adam_1")]
    if opaque_moments and not load_cudnn and not dropped(LSTM, n) and not all(k in shapes for k in lstm_moments):
        raise UserError(f"{prefix} was trained with --train_cudnn: its LSTM's Adam moments are in cuDNN's opaque "
                        f"layout ({OPAQUE}/Adam), which dsflow does not convert. Set load_cudnn true to start them at "
                        "zero (DeepSpeech's --load_cudnn does the same; the weights themselves load)")
    if not opt.built:
        opt.build(net.trainable_variables)

    state = LoadedState(prefix, 0, None)
    for name, var in names.items():
        m, v = _moments(opt, var)
        if dropped(name, n):
            state.initialized.append(name)
            m.assign(tf.zeros_like(m))
            v.assign(tf.zeros_like(v))
            continue
        var.assign(reader.get_tensor(name))
        state.loaded.append(name)
        slots = [f"{name}/Adam", f"{name}/Adam_1"]
        if all(s in shapes and list(shapes[s]) == var.shape.as_list() for s in slots):
            m.assign(reader.get_tensor(slots[0]))
            v.assign(reader.get_tensor(slots[1]))
        else:
            m.assign(tf.zeros_like(m))
            v.assign(tf.zeros_like(v))
            state.fresh_moments.append(name)
    state.fresh_moments += state.initialized
    if state.initialized:
        log.info("drop_source_layers %d: re-initialized %s", n, ", ".join(state.initialized))
    if set(state.fresh_moments) - set(state.initialized):
        log.warning("%s: no Adam moments for %s; they start at zero", prefix,
                    ", ".join(sorted(set(state.fresh_moments) - set(state.initialized))))

    step = int(reader.get_tensor("global_step")) if "global_step" in shapes else None
    for p, beta in (("beta1_power", float(opt.beta_1)), ("beta2_power", float(opt.beta_2))):
        t = _step_of(reader.get_tensor(p), beta) if p in shapes else None
        if t is not None and step is None:
            step = round(t)
            log.warning("%s: no global_step; Adam's step %d taken from %s", prefix, step, p)
        elif t is not None and abs(t - step) > 0.5:
            log.warning("%s: %s is Adam step %.1f with beta %g, but global_step is %d (other beta1/beta2, or "
                        "DeepSpeech's drop_source_layers 5 reset beta2_power); dsflow's Adam continues at step %d",
                        prefix, p, round(t, 1) + 0.0, beta, step, step)
    if step is None:
        log.warning("%s: no global_step or beta powers; Adam's step count starts at 0", prefix)
    state.global_step = step or 0
    if n == 5:
        log.warning("drop_source_layers 5: DeepSpeech also re-initializes beta2_power (its name contains '2'), "
                    "restarting the second-moment bias correction of every kept layer; Keras' Adam has one step "
                    "count for both moments, so dsflow keeps global_step %d for both", state.global_step)
    opt.iterations.assign(state.global_step)
    if "learning_rate" in shapes:
        state.learning_rate = float(np.float32(reader.get_tensor("learning_rate")))
    log.info("loaded %s: %d tensors, global step %d, learning rate %s", prefix, len(state.loaded),
             state.global_step, "none stored" if state.learning_rate is None else f"{state.learning_rate:g}")
    return state


def _flags_txt(flags: dict, net) -> str:
    """DeepSpeech's flags.txt (absl `flags_into_string`: `--name=value`, booleans `--name` / `--noname`, by name)."""
    values = {**flags, "n_hidden": net.n_hidden, "layer_norm": bool(net.layer_1.layer_norm), "train_cudnn": False,
              "load_cudnn": False, "relu_clip": net.relu_clip}
    lines = {}
    for kind, names in DS_FLAGS.items():
        for name in names:
            if values.get(name) is None:
                continue
            value = kind(values[name])
            lines[name] = (f"--{name}" if value else f"--no{name}") if kind is bool else f"--{name}={value}"
    return "".join(lines[k] + "\n" for k in sorted(lines))


def write(directory: str | Path, net, opt, best_dev: bool = False, state_files: tuple | None = None,
          alphabet_path: str | Path | None = None, flags: dict | None = None) -> str:
    """Write the model and its Adam state as a DeepSpeech 0.9.3 checkpoint in `directory`: `train-<step>` (or
    `best_dev-<step>`), step = Adam's iterations = global_step; then its state files (default: `checkpoint`, or
    `best_dev_checkpoint` with best_dev) name it; alphabet.txt (a copy of `alphabet_path`) and flags.txt (from
    `flags`, e.g. dsflow train's flags.json) when given. Returns the prefix."""
    import numpy as np
    import tensorflow as tf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not opt.built:
        opt.build(net.trainable_variables)
    step = int(opt.iterations.numpy())
    tensors = {}
    for name, var in variables(net).items():
        m, v = _moments(opt, var)
        tensors.update({name: tf.convert_to_tensor(var), f"{name}/Adam": tf.convert_to_tensor(m),
                        f"{name}/Adam_1": tf.convert_to_tensor(v)})
    for p, beta in (("beta1_power", opt.beta_1), ("beta2_power", opt.beta_2)):  # as Keras' next step computes it
        tensors[p] = tf.pow(tf.constant(beta, tf.float32), tf.cast(step + 1, tf.float32))
    tensors["global_step"] = tf.constant(step, tf.int64)
    tensors["learning_rate"] = tf.constant(np.float32(opt.learning_rate.numpy()))
    name = f"{'best_dev' if best_dev else 'train'}-{step}"
    tmp = directory / f".{name}.{uuid.uuid4().hex[:8]}.part"
    keys = sorted(tensors)
    try:
        tf.raw_ops.SaveV2(prefix=str(tmp), tensor_names=keys, shape_and_slices=[""] * len(keys),
                          tensors=[tensors[k] for k in keys])
        for suffix in (".data-00000-of-00001", ".index"):  # the index last: a prefix with an index is complete
            os.replace(f"{tmp}{suffix}", directory / f"{name}{suffix}")
    finally:
        for f in directory.glob(f"{tmp.name}*"):
            f.unlink()
    for state_file in state_files or (STATE_FILES["best" if best_dev else "last"],):
        write_text(directory / state_file, _state_text(name))
    if alphabet_path is not None:
        (directory / "alphabet.txt").write_bytes(Path(alphabet_path).read_bytes())
    if flags is not None:
        write_text(directory / "flags.txt", _flags_txt(flags, net))
    log.info("wrote DeepSpeech checkpoint %s (global step %d)", directory / name, step)
    return str(directory / name)


def load_start(net, opt, folder: str | Path, which: str, drop_source_layers: int, alphabet, load_cudnn: bool):
    """`load_into` for the checkpoint folder training starts from, in DeepSpeech's format or dsflow's (a dsflow
    folder is converted to DeepSpeech's format in a temporary folder first, so that the same rules apply)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dsflow-start-") as tmp:
        if (Path(folder) / "flags.json").is_file():
            folder = export(folder, Path(tmp) / "deepspeech", which)
            which = "auto"
        return load_into(net, opt, folder, which, drop_source_layers, alphabet, load_cudnn, training=False)


# ---------------------------------------------------------------------------------------------- command line

def add_parser(sub) -> None:
    p = sub.add_parser("export-checkpoint", help="convert a `dsflow train` checkpoint folder into a DeepSpeech "
                                                 "0.9.3 checkpoint (weights, Adam state, step, learning rate)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--checkpoint_dir", required=True, help="a checkpoint folder published by `dsflow train`")
    flags.add_option(p, "load_evaluate")
    a("--output_dir", required=True, help="the DeepSpeech checkpoint folder (replaced atomically)")
    p.set_defaults(func=_main)


def export(checkpoint_dir: str | Path, output_dir: str | Path, which: str = "auto") -> str:
    """A `dsflow train` checkpoint folder -> a DeepSpeech checkpoint folder: best_dev-N (with best_dev_checkpoint
    and checkpoint naming it) when `which` chose the best_dev checkpoint, else train-N (checkpoint)."""
    import tensorflow as tf

    from dsflow import checkpoints, model

    net = checkpoints.load_model(checkpoint_dir, which)
    f = net.flags
    opt = model.adam(f["learning_rate"], f["beta1"], f["beta2"], f["epsilon"])
    opt.build(net.trainable_variables)
    tf.train.Checkpoint(model=net, optimizer=opt).read(net.checkpoint).expect_partial() \
        .assert_existing_objects_matched()
    best = Path(net.checkpoint).name.startswith("best_dev-")
    alphabet = Path(checkpoint_dir) / "alphabet.txt"  # none in bytes_output_mode (flags.txt says it)
    with atomic_dir(output_dir) as tmp:
        prefix = write(tmp, net, opt, best_dev=best,
                       state_files=("best_dev_checkpoint", "checkpoint") if best else ("checkpoint",),
                       alphabet_path=alphabet if alphabet.is_file() else None, flags=f)
    return str(Path(output_dir) / Path(prefix).name)


def _main(args) -> int:
    from dsflow import gpu

    gpu.init_tensorflow(0)
    prefix = export(args.checkpoint_dir, args.output_dir, args.load_evaluate)
    log.info("DeepSpeech checkpoint: %s", prefix)
    return 0
