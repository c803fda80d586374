"""Keras callbacks: periodic singular value clipping and layer-norm traces for TensorBoard.

* :class:`SingularValueClipping`: clips the singular values of every Conv2D,
  DepthwiseConv2D and Dense layer every N steps, as Liang & Huang's SVC runs.
* :class:`LayerNormLogger`: writes the l1 / l_inf / l2 operator norm of every
  supported layer, their histograms and products to TensorBoard.

The maths is in :mod:`tfnorms.norms`.
"""

from __future__ import annotations

import math
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _args, _keras, norms

__all__ = ["LayerNormLogger", "SingularValueClipping"]


def __getattr__(name):
    # The lambda schedules live in tfnorms.war (above this module: they evaluate the model's stability).
    # The former re-export stays reachable, and constructing it warns.
    if name == "WidthAdjustedRegularization":
        from tfnorms import war

        return war.WidthAdjustedRegularization
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _spatial_known(shape):
    return shape is not None and None not in tuple(shape)


class _StepGate:
    """Fires once every ``every`` optimizer steps (robust to ``steps_per_execution``)."""

    def __init__(self, every):
        self.every = every
        self.last = 0

    def reset(self, step):
        self.last = step

    def due(self, step):
        fire = step // self.every > self.last // self.every
        self.last = step
        return fire


@keras.saving.register_keras_serializable(package="tfnorms")
class SingularValueClipping(keras.callbacks.Callback):
    """Clips the singular values of every Conv2D/DepthwiseConv2D/Dense layer every N steps.

    Dense kernels are clipped by SVD; convolutions by one pass of Sedghi et
    al.'s clipping of the stride-1 circular convolution on the layer's input
    size, read from the model (:func:`tfnorms.norms.conv_geometry`), exactly
    as Liang & Huang apply it to every conv layer (strided and 1x1 ones
    included). The real-FFT formulation of
    :func:`tfnorms.norms.conv2d_clip_singular_values` is used, compiled in one
    ``tf.function`` for all layers.

    The clip runs after optimizer steps ``N, 2N, ...`` (Keras callbacks cannot
    run between the gradient and the update; the reference clips before the
    update of batches ``1, 101, ...`` of each epoch, which differs by where in
    the step the projection sits). Layers whose input size is unknown, is
    smaller than the kernel, or that are dilated are skipped with a warning.

    Args:
        clip_to: largest singular value allowed (> 0).
        every_n_steps: clip every this many optimizer steps (the paper: 100).
        method: ``"gram"`` (default), ``"svd"`` or ``"hermitian"``; see
            :func:`tfnorms.norms.clip_matrix_singular_values`.
        include_dense: whether to clip Dense layers too (the paper does).
        jit_compile: compile the clipping function with XLA.

    Example:
        >>> import tfnorms
        >>> clipping = tfnorms.callbacks.SingularValueClipping(1.0, every_n_steps=100)
        >>> # model.fit(x, y, callbacks=[clipping])
    """

    def __init__(self, clip_to=1.0, every_n_steps=100, method="gram", include_dense=True, jit_compile=False):
        super().__init__()
        self.clip_to = _args.positive(clip_to, "clip_to")
        self.every_n_steps = _args.positive_int(every_n_steps, "every_n_steps")
        self.method = _args.choice(method, "method", norms.SVC_METHODS)
        self.include_dense = bool(include_dense)
        self.jit_compile = bool(jit_compile)
        self._gate = _StepGate(self.every_n_steps)
        self._function = None
        self.skipped = []

    def _targets(self):
        targets, skipped = [], []
        for layer in _keras.flatten_layers(self.model):
            if isinstance(layer, keras.layers.Dense) and self.include_dense and layer.built:
                targets.append((layer, None))
            elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and layer.built:
                geom = norms.conv_geometry(layer)
                shape = geom["input_shape"]
                kh, kw = geom["kernel"].shape[:2]
                if not _spatial_known(shape):
                    skipped.append((layer.path, "unknown input size"))
                elif shape[0] < kh or shape[1] < kw:
                    skipped.append((layer.path, f"input {tuple(shape)} smaller than the kernel"))
                elif max(geom["dilation_rate"]) > 1:
                    skipped.append((layer.path, "dilated"))
                else:
                    targets.append((layer, (tuple(int(n) for n in shape), geom["groups"])))
        return targets, skipped

    def _build(self):
        targets, self.skipped = self._targets()
        if self.skipped:
            listing = ", ".join(f"{path} ({why})" for path, why in self.skipped)
            warnings.warn(f"SingularValueClipping skips: {listing}.", stacklevel=3)
        clip_to, method = self.clip_to, self.method

        def clip_all():
            for layer, conv in targets:
                kernel = tf.convert_to_tensor(layer.kernel)
                if conv is None:
                    new = norms.dense_clip_singular_values(kernel, clip_to, method)
                else:
                    shape, groups = conv
                    grouped = norms.conv_geometry(layer)["kernel"]
                    new = norms.conv2d_clip_singular_values(
                        grouped, clip_to, input_shape=shape, groups=groups, method=method
                    )
                    new = tf.reshape(new, kernel.shape)
                layer.kernel.assign(new)
            return tf.constant(len(targets))

        self._function = tf.function(clip_all, jit_compile=self.jit_compile, autograph=False)
        self._targets_paths = [layer.path for layer, _ in targets]

    def clip_now(self):
        """Clips all targeted layers of ``self.model`` immediately; returns their paths."""
        if self._function is None:
            self._build()
        self._function()
        return list(self._targets_paths)

    def on_train_begin(self, logs=None):
        _keras.bind_before_training(self.model)
        self._build()
        self._gate.reset(int(self.model.optimizer.iterations.numpy()))

    def on_train_batch_end(self, batch, logs=None):
        if self._gate.due(int(self.model.optimizer.iterations.numpy())):
            self._function()

    def get_config(self):
        return {
            "clip_to": self.clip_to,
            "every_n_steps": self.every_n_steps,
            "method": self.method,
            "include_dense": self.include_dense,
            "jit_compile": self.jit_compile,
        }


@keras.saving.register_keras_serializable(package="tfnorms")
class LayerNormLogger(keras.callbacks.Callback):
    """Writes layer operator norms to TensorBoard, beside ``keras.callbacks.TensorBoard``.

    Event files go to ``<log_dir>/train`` (the Keras TensorBoard layout, so
    both callbacks can share ``log_dir``). For every supported layer
    (Conv2D, DepthwiseConv2D, Dense, BatchNormalization; nested models are
    traversed) and every requested ``ord`` it writes

    * ``norms/<layer.path>/l1``, ``norms/<layer.path>/linf``,
      ``norms/<layer.path>/l2``: the layer's operator norm (scalars);
    * ``norm_histograms/<l1|linf|l2>``: histogram of the per-layer norms;
    * ``norm_product/<l1|linf|l2>``: the product of all per-layer norms, the
      Lipschitz upper bound of a plain chain of these layers (ReLU and pooling
      are 1-Lipschitz; for residual networks it is not a bound) and
      ``norm_log10_product/<...>``, its base-10 logarithm (the product
      overflows float32 on deep networks).

    l1 and l_inf are exact (closed forms, no iteration). l2 of Dense and
    BatchNorm layers is exact; for convolutions it depends on ``l2_method``:

    * ``"power"`` (default): ``power_iterations`` power iterations per log
      on the zero-padded operator, warm-started from the previous log's
      vector: a lower bound that converges as training proceeds; the first
      logs can underestimate.
    * ``"bound"``: the FFT norm of the circular convolution on an enlarged
      torus (:func:`tfnorms.norms.conv2d_spectral_norm_bound`): an upper
      bound, exact for circular padding, costly for wide layers.
    * ``"gram"``: the Gram-iteration bound of the same circular convolution
      on the smallest enclosing torus (``conv2d_spectral_norm(...,
      method="gram")``): a certified upper bound from matrix products only
      (no eigendecomposition), so it also compiles with ``jit_compile``.

    Every norm is computed in a single ``tf.function``. Scalars use the epoch
    index as step with ``update_freq="epoch"``, and the optimizer's step
    count with an integer ``update_freq``.

    Args:
        log_dir: TensorBoard log directory.
        ords: norms to log, from ``1``, ``numpy.inf`` (or ``"inf"``), ``2``.
        update_freq: ``"epoch"`` or a positive int (every N optimizer steps).
        l2_method: ``"power"``, ``"bound"`` or ``"gram"``.
        power_iterations: power iterations per log for ``l2_method="power"``.
        jit_compile: compile the norm computation with XLA.

    Example:
        >>> import numpy as np, tfnorms
        >>> logger = tfnorms.callbacks.LayerNormLogger("/tmp/logs", ords=(1, np.inf))
        >>> # model.fit(x, y, callbacks=[keras.callbacks.TensorBoard("/tmp/logs"), logger])
    """

    def __init__(
        self,
        log_dir,
        ords=(1, np.inf, 2),
        update_freq="epoch",
        l2_method="power",
        power_iterations=10,
        jit_compile=False,
    ):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)):
            raise ValueError(f"Invalid value for argument `log_dir`. Expected a path. Received: log_dir={log_dir!r}")
        self.log_dir = os.fspath(log_dir)
        self.ords = _args.ords(ords, "ords", allowed=(1, 2, np.inf))
        self.update_freq = _args.update_freq(update_freq)
        self.l2_method = _args.choice(l2_method, "l2_method", ("power", "bound", "gram"))
        self.power_iterations = _args.positive_int(power_iterations, "power_iterations")
        self.jit_compile = bool(jit_compile)
        self._writer = None
        self._function = None
        self._gate = None

    # -- norm computation

    def _plan(self):
        """List of ``(path, ord, compute)`` with ``compute()`` returning a scalar tensor."""
        plan, skipped = [], []
        self._vectors = {}
        for layer in _keras.flatten_layers(self.model):
            if not norms.is_supported(layer) or not layer.built:
                continue
            is_conv = isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
            for ord in self.ords:
                if ord != 2 or not is_conv:
                    plan.append((layer.path, ord, lambda layer=layer, ord=ord: norms.layer_norm(layer, ord)))
                    continue
                geom = norms.conv_geometry(layer)
                shape = geom["input_shape"]
                if not _spatial_known(shape):
                    skipped.append(layer.path)
                    continue
                shape = tuple(int(n) for n in shape)
                if self.l2_method == "gram":
                    plan.append((layer.path, ord, lambda layer=layer: norms.layer_norm(layer, 2, spectral_method="gram")))
                elif self.l2_method == "bound":
                    plan.append((layer.path, ord, lambda layer=layer, shape=shape: self._bound(layer, shape)))
                else:
                    c_in = geom["kernel"].shape[2] * geom["groups"]
                    seed = len(self._vectors)
                    vector = tf.Variable(
                        tf.random.stateless_normal((1,) + shape + (c_in,), seed=(seed, 1)),
                        trainable=False,
                        name=f"power_vector_{seed}",
                    )
                    self._vectors[layer.path] = vector
                    plan.append((layer.path, ord, lambda layer=layer, vector=vector: self._power(layer, vector)))
        if skipped:
            warnings.warn(
                "LayerNormLogger: no l2 norm for layers with unknown input size: " + ", ".join(skipped),
                stacklevel=3,
            )
        return plan

    @staticmethod
    def _bound(layer, shape):
        geom = norms.conv_geometry(layer)
        return norms.conv2d_spectral_norm_bound(
            geom["kernel"], input_shape=shape, dilation_rate=geom["dilation_rate"], groups=geom["groups"]
        )

    def _power(self, layer, vector):
        geom = norms.conv_geometry(layer)
        sigma, new_vector = norms.conv2d_power_iteration(
            tf.cast(geom["kernel"], vector.dtype),
            vector,
            num_iterations=self.power_iterations,
            strides=geom["strides"],
            padding=geom["padding"],
            dilation_rate=geom["dilation_rate"],
            groups=geom["groups"],
        )
        vector.assign(new_vector)
        return sigma

    def _build(self):
        plan = self._plan()
        self._keys = [(path, ord) for path, ord, _ in plan]

        def compute():
            values = [tf.cast(fn(), tf.float32) for _, _, fn in plan]
            return tf.stack(values) if values else tf.zeros((0,), tf.float32)

        self._function = tf.function(compute, jit_compile=self.jit_compile, autograph=False)

    def compute_norms(self):
        """All logged norms now, as a dict ``{(layer_path, ord): float}``."""
        if self._function is None:
            self._build()
        values = self._function().numpy().tolist()  # one read-back for every norm
        return dict(zip(self._keys, values))

    # -- writing

    def _description(self, ord):
        if ord == 2:
            if self.l2_method == "power":
                how = (f"conv layers: {self.power_iterations} warm-started power iterations per log "
                       "on the zero-padded operator (lower bound)")
            elif self.l2_method == "gram":
                how = "conv layers: Gram-iteration bound of the circular convolution on the enclosing torus (upper bound)"
            else:
                how = "conv layers: FFT norm of the circular convolution on an enlarged torus (upper bound)"
            return f"Spectral (l2) operator norm; Dense/BatchNorm exact; {how}."
        return f"Exact {_args.ord_name(ord)} operator norm (closed form)."

    def write(self, step):
        """Computes every norm and writes the summaries at ``step``."""
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        values = self.compute_norms()
        with self._writer.as_default(step=int(step)):
            for ord in self.ords:
                name = _args.ord_name(ord)
                layer_values = [(path, v) for (path, o), v in values.items() if o == ord]
                for path, value in layer_values:
                    tf.summary.scalar(f"norms/{path}/{name}", value, description=self._description(ord))
                if layer_values:
                    array = np.array([v for _, v in layer_values], dtype=np.float64)
                    tf.summary.histogram(f"norm_histograms/{name}", array)
                    log10 = float(np.sum(np.log10(np.maximum(array, np.finfo(np.float64).tiny))))
                    product = float(np.prod(array)) if log10 < 38 else math.inf
                    tf.summary.scalar(f"norm_product/{name}", product)
                    tf.summary.scalar(f"norm_log10_product/{name}", log10)
        self._writer.flush()
        return values

    # -- callback hooks

    def on_train_begin(self, logs=None):
        _keras.bind_before_training(self.model)
        self._build()
        if self.update_freq != "epoch":
            self._gate = _StepGate(self.update_freq)
            self._gate.reset(int(self.model.optimizer.iterations.numpy()))

    def on_train_batch_end(self, batch, logs=None):
        if self._gate is not None:
            step = int(self.model.optimizer.iterations.numpy())
            if self._gate.due(step):
                self.write(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self.write(epoch)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get_config(self):
        return {
            "log_dir": self.log_dir,
            "ords": ["inf" if o == np.inf else int(o) for o in self.ords],
            "update_freq": self.update_freq,
            "l2_method": self.l2_method,
            "power_iterations": self.power_iterations,
            "jit_compile": self.jit_compile,
        }
