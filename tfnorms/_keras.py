"""The one place where tfnorms meets Keras: traversal, geometry, attaching, binding.

* Traversal: :func:`flatten_layers`, :func:`own_variables`, :func:`owner_of`.
* Geometry: what a Conv2D / DepthwiseConv2D layer's operator is
  (:func:`layer_geometry_config`, :func:`built_input_shape`,
  :func:`feeding_layer`), the checks of the geometry arguments of the
  regularizers and constraints (:func:`validate_conv_geometry`), and the
  Keras-layout kernel as the operator :mod:`tfnorms.norms` expects
  (:func:`operator_kernel`).
* Attaching: :func:`attach` puts a regularizer or constraint where Keras both
  uses it (the variable) and saves it (the layer's constructor argument).
* Binding: :func:`bind` (public as ``tfnorms.bind``) gives every tfnorms
  regularizer and constraint the geometry of the layer it sits on.

Private Keras attributes (no public equivalent in Keras 3); each is pinned by
``tests/test_keras_glue.py`` so a Keras change breaks a test, not a result:

* ``Layer._flatten_layers``: all layers, nested ones included (``model.layers``
  lists only the top level and misses layers inside subclassed layers).
* ``Layer._build_shapes_dict``: the input shape a layer was built with when it
  is not part of a functional graph (``layer.input`` then raises).
* ``Layer._inbound_nodes`` / ``Node.parent_nodes``: the layer that feeds a conv
  (to fold a preceding ``ZeroPadding2D``).
* ``Optimizer._var_key``: the optimizer's key for a variable (one key for the
  per-replica copies of a distributed variable).
* ``Optimizer._variables``: an optimizer's own variables, without those of an
  optimizer it wraps; ``Optimizer._trainable_variables``: those it was built for.
* ``TensorBoard._writers``: the callback's open summary writers (to flush them).
* ``Trainer._maybe_symbolic_build`` (TensorFlow trainer) and
  ``MultiWorkerMirroredStrategy.extended._in_multi_worker_mode``: the
  multi-worker workaround of :class:`MultiWorkerFit`.

One private TensorFlow attribute, pinned by ``tests/test_autoattack.py``:
``tensorflow.python.framework.ops._gradient_registry`` (the gradient function of
each op type), swapped while the attacks trace by
:func:`conv_input_gradients_as_convolutions`.

``tfnorms.resume.AtomicBackupAndRestore`` overrides ``BackupAndRestore``'s own
hooks (``_save_model``, ``_load_model``); its tests pin them.

Example:
    >>> import keras, tfnorms
    >>> model = keras.Sequential([keras.Input((9, 9, 1)),
    ...     keras.layers.Conv2D(2, 3, strides=2, kernel_regularizer=tfnorms.NormDecay())])
    >>> bound = tfnorms.bind(model)
    >>> model.layers[0].kernel_regularizer.geometry["strides"]
    (2, 2)
"""

from __future__ import annotations

import contextlib
import threading
import warnings

import keras
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from tfnorms import _args

CONV_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
KINDS = ("regularizer", "constraint")


class UnboundWarning(UserWarning):
    """A tfnorms regularizer or constraint runs without its layer's geometry."""


# ---------------------------------------------------------------- private Keras attributes


def flatten_layers(model, include_self=False):
    """Every layer of ``model``, nested ones included, each once, in Keras' order."""
    return list(model._flatten_layers(include_self=include_self, recursive=True))


def own_variables(layer):
    """The variables that ``layer`` itself creates (not those of its sublayers), in creation order."""
    nested = {id(v) for sub in flatten_layers(layer) for v in sub.weights}
    return [v for v in layer.weights if id(v) not in nested]


def built_input_shape(layer):
    """The full input shape ``layer`` was built with, or ``None``."""
    try:
        return tuple(layer.input.shape)
    except (AttributeError, ValueError, RuntimeError):
        pass
    for value in (getattr(layer, "_build_shapes_dict", None) or {}).values():
        if value is not None:
            return tuple(value)
    return None


def feeding_layer(layer):
    """The single layer feeding ``layer`` in a functional graph, or ``None``."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1 or len(nodes[0].parent_nodes) != 1:
        return None
    return nodes[0].parent_nodes[0].operation


def variable_key(optimizer, variable):
    """The key ``optimizer`` uses for ``variable`` (stable across replicas)."""
    return optimizer._var_key(variable)


def optimizer_own_variables(optimizer):
    """The variables an optimizer created itself (a wrapper's, without the wrapped optimizer's)."""
    return optimizer._variables[:]


def tensorboard_writers(callback):
    """The summary writers a ``keras.callbacks.TensorBoard`` callback has open (none if Keras changes)."""
    return list(getattr(callback, "_writers", {}).values())


def optimizer_trainable_variables(optimizer):
    """The variables a built optimizer was built for."""
    return optimizer._trainable_variables


# ---------------------------------------------------------------- traversal and attaching


def owner_of(model):
    """``{id(variable): layer}`` for every variable of ``model`` (the model's own included)."""
    owners = {}
    for layer in flatten_layers(model, include_self=True):
        for variable in own_variables(layer):
            owners.setdefault(id(variable), layer)
    return owners


def weight_attribute(layer, variable, kind):
    """The constructor argument of ``layer`` that holds ``variable``'s ``kind`` ("regularizer" or "constraint").

    ``None`` when the layer has no such argument (a custom layer): Keras then
    cannot save what is set on the variable.
    """
    name = variable.name
    if isinstance(layer, keras.layers.DepthwiseConv2D) and name == "kernel":
        name = "depthwise"
    elif name.endswith("_kernel") and name != "kernel":
        name = name[: -len("_kernel")]  # SeparableConv2D: depthwise_kernel -> depthwise_regularizer
    attribute = f"{name}_{kind}"
    return attribute if hasattr(layer, attribute) else None


def attach(layer, variable, kind, obj):
    """Sets ``obj`` as ``variable``'s ``kind`` where Keras applies it and where it saves it.

    Returns:
        ``True`` if it is saved with the model (the layer has the constructor
        argument), ``False`` if only the variable holds it.
    """
    setattr(variable, kind, obj)
    attribute = weight_attribute(layer, variable, kind)
    if attribute is None:
        return False
    setattr(layer, attribute, obj)
    return True


def reset_compiled_functions(model):
    """Makes ``fit`` / ``evaluate`` / ``predict`` re-trace after a regularizer or constraint changed.

    A function Keras already made is re-made rather than dropped, so this is
    safe inside ``fit`` (from a callback's ``on_train_begin``).
    """
    for kind in ("train", "test", "predict"):
        if getattr(model, f"{kind}_function", None) is not None:
            getattr(model, f"make_{kind}_function")(force=True)


# ---------------------------------------------------------------- geometry


def validate_conv_geometry(input_shape, strides, padding, dilation_rate, groups):
    """Checks conv geometry arguments; returns them in a JSON-friendly normal form."""
    from tfnorms.norms import geometry
    from tfnorms.norms.operator_norms import normalize_input_shape

    shape = normalize_input_shape(None if input_shape is None else tuple(input_shape))
    strides, dilation_rate = geometry.check_stride_dilation(
        tuple(strides) if isinstance(strides, list) else strides,
        tuple(dilation_rate) if isinstance(dilation_rate, list) else dilation_rate,
    )
    pads = geometry.normalize_padding(padding)
    if isinstance(pads[0], str):
        if pads[0] != pads[1]:
            raise _args.invalid("padding", '"same", "valid" or ((top, bottom), (left, right))', padding)
        padding = pads[0]
    else:
        padding = tuple(tuple(p) for p in pads)
    return dict(
        input_shape=None if shape == (None, None) else shape,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        groups=_args.positive_int(groups, "groups"),
    )


def validate_depthwise(depthwise, groups):
    """Checks the ``depthwise`` switch; ``groups`` must stay 1 with it (one group per channel is implied)."""
    depthwise = _args.boolean(depthwise, "depthwise")
    if depthwise and groups != 1:
        raise _args.invalid("groups", "1 with depthwise=True (one group per input channel is implied)", groups)
    return depthwise


def geometry_to_config(geom):
    """JSON-safe copy of a validated geometry dict (tuples become lists)."""

    def listify(value):
        return [listify(v) for v in value] if isinstance(value, (tuple, list)) else value

    return {key: listify(value) for key, value in geom.items()}


def operator_kernel(kernel, geometry, depthwise):
    """A kernel in the layout :mod:`tfnorms.norms` expects, the geometry to pass with it, and the way back.

    Dense kernels come back unchanged with no geometry; Conv2D kernels with
    ``geometry``; DepthwiseConv2D kernels (``depthwise=True``) as the
    equivalent grouped Conv2D kernel with ``groups=c_in``.

    Returns:
        ``(kernel, geometry, back)`` where ``back`` maps a tensor shaped like
        the returned kernel (a projection, a mask) to the original layout.
    """
    from tfnorms import norms

    if depthwise:
        if kernel.shape.rank != 4:
            raise ValueError(
                "depthwise=True expects a DepthwiseConv2D kernel (rank 4, layout (kh, kw, c_in, "
                f"multiplier)). Received a tensor of shape {kernel.shape}."
            )
        grouped, groups = norms.depthwise_as_grouped(kernel)
        shape = kernel.shape
        return grouped, {**geometry, "groups": groups}, lambda t: norms.grouped_as_depthwise(t, shape)
    return kernel, (geometry if kernel.shape.rank == 4 else {}), lambda t: t


def kernel_operator_norm(kernel, ord, geom):
    """The l1 (``ord=1``) or l_inf operator norm of a Dense (rank 2) or Conv2D (rank 4) kernel."""
    from tfnorms import norms

    rank = kernel.shape.rank
    if rank == 2:
        return norms.dense_l1_norm(kernel) if ord == 1 else norms.dense_linf_norm(kernel)
    if rank == 4:
        function = norms.conv2d_l1_norm if ord == 1 else norms.conv2d_linf_norm
        return function(kernel, **geom)
    raise ValueError(
        "Expected a Dense kernel (rank 2) or a Conv2D kernel (rank 4, layout "
        f"(kh, kw, c_in, c_out)). Received a tensor of shape {kernel.shape}."
    )


def layer_geometry_config(layer, with_padding=True):
    """The geometry arguments of the regularizers and constraints, read from a built conv layer.

    Reads :func:`tfnorms.norms.conv_geometry` (which folds a preceding
    ``ZeroPadding2D``) into JSON-safe values; an unknown input size becomes
    ``None``. DepthwiseConv2D layers get ``depthwise=True`` and ``groups=1``.
    """
    from tfnorms import norms

    geom = norms.conv_geometry(layer)
    shape = geom["input_shape"]
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
    padding = geom["padding"]
    config = dict(
        input_shape=None if shape is None or None in tuple(shape) else [int(n) for n in shape],
        groups=1 if depthwise else geom["groups"],
        depthwise=depthwise,
    )
    if with_padding:
        config.update(
            strides=list(geom["strides"]),
            padding=padding if isinstance(padding, str) else [list(p) for p in padding],
            dilation_rate=list(geom["dilation_rate"]),
        )
    return config


def describe(layer, variable):
    """``"weight 'path' of layer 'name' (Type)"`` for messages."""
    return f"weight {variable.path!r} of layer {layer.name!r} ({type(layer).__name__})"


def require_kernel(obj, layer, variable):
    """Raises unless ``variable`` is the kernel of a Conv2D, DepthwiseConv2D or Dense layer."""
    if not (isinstance(layer, CONV_LAYERS + (keras.layers.Dense,)) and variable is getattr(layer, "kernel", None)):
        raise ValueError(
            f"{type(obj).__name__} on {describe(layer, variable)}: supported are Conv2D, DepthwiseConv2D "
            "and Dense kernels."
        )


def warn_unbound(obj, weight):
    """Warns once per object that ``obj`` treats a rank-4 kernel without knowing its layer."""
    if getattr(obj, "_warned_unbound", False):
        return
    object.__setattr__(obj, "_warned_unbound", True)
    path = getattr(weight, "path", None)
    where = f"the weight {path!r}" if path else "a rank-4 kernel"
    warnings.warn(
        f"{type(obj).__name__} on {where} is not bound to its layer: a kernel does not tell the layer's "
        "strides, padding, dilation, input size or whether it is a DepthwiseConv2D kernel, so it is "
        "treated as a stride-1 Conv2D kernel on a large input, which can differ from the layer's exact "
        "norm. Fix: call tfnorms.bind(model) once the model is built (AdversarialTrainer and the tfnorms "
        "callbacks do it for you; the binding is saved with the model), or pass the geometry arguments.",
        UnboundWarning,
        stacklevel=3,
    )


# ---------------------------------------------------------------- binding


def _bind_weight(layer, variable, kind, changed, unsaved):
    obj = getattr(variable, kind, None)
    binder = getattr(obj, "bind_to", None)
    if binder is None:
        return None
    new = binder(layer, variable)
    saved = attach(layer, variable, kind, new)
    if new is not obj:
        changed.append(variable.path)
        if not saved:
            unsaved.append(variable.path)
    return new


def bind_before_training(model):
    """:func:`bind` from a callback's ``on_train_begin``: skips what is not a built Keras model.

    An unbuilt model is bound later, when :class:`tfnorms.AdversarialTrainer`
    traces its step (a plain ``fit`` builds the model before the callbacks run).
    """
    if isinstance(model, keras.Model) and model.built:
        bind(model)


def bind(model, *, reset_functions=True):
    """Binds every tfnorms regularizer and constraint of a built model to its layer.

    Reads each layer's geometry (strides, padding, dilation, groups,
    depthwise, input size, a preceding ``ZeroPadding2D``) into every
    :class:`tfnorms.NormDecay`, :class:`tfnorms.MaxOperatorNorm` and
    :class:`tfnorms.SingularValueClip` on its kernel, and binds
    :class:`tfnorms.MaxBatchNormNorm` to its layer's moving variance,
    through any :class:`tfnorms.regularizers.Sum` with other regularizers.
    Each layer gets its own bound copy (a shared instance is safe) set both
    on the variable and on the layer's constructor argument, so the binding
    is saved with the model. Idempotent: binding again changes nothing and
    re-traces nothing.

    :class:`tfnorms.AdversarialTrainer` and the tfnorms callbacks call it
    themselves; call it yourself for a plain ``model.fit``.

    Args:
        model: a built ``keras.Model``.
        reset_functions: re-make compiled train / test / predict functions
            when something changed.

    Returns:
        ``{"regularizers": {path: obj}, "constraints": {path: obj}}`` for every
        weight that carries a tfnorms object.

    Raises:
        ValueError: if the model is not built, or a tfnorms object sits on a
            weight it does not support (a bias, an RNN kernel, ...).

    Example:
        >>> import keras, tfnorms
        >>> model = keras.Sequential([keras.Input((9, 9, 1)), keras.layers.Conv2D(
        ...     2, 3, strides=2, kernel_regularizer=tfnorms.NormDecay(), name="conv")], name="net")
        >>> list(tfnorms.bind(model)["regularizers"])
        ['net/conv/kernel']
    """
    if not getattr(model, "built", False):
        raise ValueError(f"Model {model.name!r} is not built: call it on an input (or build it) first.")
    result = {"regularizers": {}, "constraints": {}}
    changed, unsaved = [], []
    for layer in flatten_layers(model, include_self=True):
        for variable in own_variables(layer):
            for kind in KINDS:
                new = _bind_weight(layer, variable, kind, changed, unsaved)
                if new is not None:
                    result[f"{kind}s"][variable.path] = new
    if unsaved:
        warnings.warn(
            f"tfnorms.bind: these weights' layers have no constructor argument for their regularizer or "
            f"constraint, so Keras will not save it with the model: {', '.join(unsaved)}.",
            stacklevel=2,
        )
    if changed and reset_functions:
        reset_compiled_functions(model)
    return result


class LayerGeometry:
    """Mixin of the regularizers and constraints that need a conv layer's geometry.

    Holds ``geometry`` (strides, padding, dilation, groups, input size) and
    ``depthwise``; ``bound`` is ``True`` once they are known, given by hand or
    by :func:`bind` (through :meth:`bind_to`). An unbound object used on a
    rank-4 kernel warns once (:class:`UnboundWarning`) and treats it as a
    stride-1 Conv2D kernel on a large input.
    """

    def _init_geometry(self, input_shape, strides, padding, dilation_rate, groups, depthwise):
        given = (input_shape, strides, padding, dilation_rate, groups, depthwise)
        self.bound = any(value is not None for value in given)
        self.geometry = validate_conv_geometry(
            input_shape,
            1 if strides is None else strides,
            "same" if padding is None else padding,
            1 if dilation_rate is None else dilation_rate,
            1 if groups is None else groups,
        )
        self.depthwise = validate_depthwise(False if depthwise is None else depthwise, self.geometry["groups"])

    def _geometry_config(self):
        if not self.bound:
            return dict.fromkeys(("input_shape", "strides", "padding", "dilation_rate", "groups", "depthwise"))
        return {**geometry_to_config(self.geometry), "depthwise": self.depthwise}

    def with_geometry(self, **geometry_args):
        """A copy with the given conv geometry (other arguments unchanged)."""
        config = self.get_config()
        config.update(geometry_args)
        return type(self).from_config(config)

    def bind_to(self, layer, variable):
        """This object bound to ``layer``'s geometry (itself if nothing changes); see :func:`bind`."""
        require_kernel(self, layer, variable)
        if isinstance(layer, keras.layers.Dense):
            return self
        new = self.with_geometry(**layer_geometry_config(layer))
        return self if new.get_config() == self.get_config() else new

    def operator(self, weight):
        """``(kernel, geometry, back)`` of :func:`operator_kernel` for ``weight``, warning if unbound."""
        import tensorflow as tf

        kernel = tf.convert_to_tensor(weight)
        if kernel.shape.rank == 4 and not self.bound:
            warn_unbound(self, weight)
        return operator_kernel(kernel, self.geometry, self.depthwise)


# ---------------------------------------------------------------- the input gradient of a convolution


def _zero_inserted(t, strides):
    """``[n, h, w, c]`` -> ``[n, (h - 1) sh + 1, (w - 1) sw + 1, c]`` with ``t`` at the multiples of the strides."""
    (sh, sw), (h, w) = strides, t.shape[1:3]
    if sh == sw == 1:
        return t
    t = tf.pad(t[:, :, None, :, None, :], [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]])
    t = tf.reshape(t, [tf.shape(t)[0], h * sh, w * sw, t.shape[-1]])
    return t[:, :(h - 1) * sh + 1, :(w - 1) * sw + 1]


def _conv2d_input_gradient(grad, x, kernel, strides, padding):
    """``dx`` of ``y = conv2d(x, kernel, strides, padding)`` (NHWC, no dilation) as a forward convolution, or None.

    With ``x`` padded by ``(b, a)`` to ``xp`` (``b = a = 0`` for "VALID";
    TensorFlow's split of the "SAME" total), ``y[i] = sum_t xp[s i + t] k[t]``, so
    ``dxp[u] = sum_t dy~[u - t] k[t]`` where ``dy~`` is ``dy`` with ``s - 1``
    zeros inserted between its entries: the "VALID" convolution of ``dy~``
    padded by ``K - 1`` (and the ``r`` trailing positions no output reads) with
    the kernel rotated by 180 degrees and its channel axes swapped; ``dx`` is
    ``dxp`` without the padding. For stride 1, "SAME" and odd kernels this is
    the "SAME" convolution of ``dy`` itself. None where a static size is unknown.
    """
    (kh, kw), (h, w), (oh, ow) = kernel.shape[:2], x.shape[1:3], grad.shape[1:3]
    if None in (kh, kw, h, w, oh, ow):
        return None
    rotated = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
    if strides == (1, 1) and padding == "SAME" and kh % 2 and kw % 2:
        return tf.nn.conv2d(grad, rotated, 1, "SAME")
    pads = []
    for size, out, k, s in ((h, oh, kh, strides[0]), (w, ow, kw, strides[1])):
        total = max((out - 1) * s + k - size, 0) if padding == "SAME" else 0
        rest = size + total - ((out - 1) * s + k)  # trailing positions of xp that no output reads
        pads.append((total // 2, [k - 1, k - 1 + rest]))  # TensorFlow pads total // 2 before
    spread = tf.pad(_zero_inserted(grad, strides), [[0, 0], pads[0][1], pads[1][1], [0, 0]])
    dxp = tf.nn.conv2d(spread, rotated, 1, "VALID")
    (top, _), (left, _) = pads
    return dxp[:, top:top + h, left:left + w]


def _conv2d_gradient(original):
    """``Conv2D``'s gradient with the input gradient as a forward convolution (:func:`_conv2d_input_gradient`).

    The same linear map as ``Conv2DBackpropInput`` (summed in another order),
    whose CPU kernels are 2-10x slower than a forward convolution on the small
    maps of attacks on small images (docs/benchmarks.md#autoattack-speed).
    Dilated, explicitly padded and channels-first convolutions, and the
    kernel's gradient, are TensorFlow's own.
    """

    def gradient(op, grad):
        x, kernel = op.inputs
        strides, padding = op.get_attr("strides"), op.get_attr("padding").decode()
        if (list(op.get_attr("dilations")) != [1, 1, 1, 1] or padding not in ("SAME", "VALID")
                or op.get_attr("data_format") != b"NHWC"):
            return original(op, grad)
        input_gradient = _conv2d_input_gradient(grad, x, kernel, tuple(strides[1:3]), padding)
        if input_gradient is None:
            return original(op, grad)
        kernel_gradient = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.shape(kernel), out_backprop=grad, strides=strides, padding=padding)
        return [input_gradient, kernel_gradient]

    return gradient


_SWAP_LOCK = threading.Lock()
_SWAP_STATE = {"active": 0}


@contextlib.contextmanager
def conv_input_gradients_as_convolutions():
    """While active, gradients built for ``Conv2D`` ops compute input gradients as forward convolutions.

    Used around the tracing of the attacks' compiled runs (the backward graph
    is built at trace time); the graph keeps the faster gradient after the
    context exits. The registry is process-wide: a gradient that another thread
    builds meanwhile gets the same linear map (equal up to float round-off);
    nested or concurrent uses install it once and restore TensorFlow's own
    gradient when the last one exits.

    Example:
        >>> x, k = tf.random.normal([1, 5, 5, 2]), tf.random.normal([3, 3, 2, 4])
        >>> def input_gradient(x):
        ...     with tf.GradientTape() as tape:
        ...         tape.watch(x)
        ...         y = tf.reduce_sum(tf.nn.conv2d(x, k, 1, "SAME") ** 2)
        ...     return tape.gradient(y, x)
        >>> with conv_input_gradients_as_convolutions():
        ...     fast = tf.function(input_gradient)(x)
        >>> bool(tf.reduce_max(tf.abs(fast - input_gradient(x))) < 1e-4)
        True
    """
    entry = tf_ops._gradient_registry._registry["Conv2D"]
    with _SWAP_LOCK:
        if _SWAP_STATE["active"] == 0:
            _SWAP_STATE["original"] = entry["type"]
            entry["type"] = _conv2d_gradient(entry["type"])
        _SWAP_STATE["active"] += 1
    try:
        yield
    finally:
        with _SWAP_LOCK:
            _SWAP_STATE["active"] -= 1
            if _SWAP_STATE["active"] == 0:
                entry["type"] = _SWAP_STATE.pop("original")


# ---------------------------------------------------------------- fit under MultiWorkerMirroredStrategy


def in_multi_worker_mode(strategy=None) -> bool:
    """Whether ``strategy`` (default: the current one) is a ``MultiWorkerMirroredStrategy`` spanning several workers."""
    strategy = tf.distribute.get_strategy() if strategy is None else strategy
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


def replica_logs(logs):
    """A ``train_step`` / ``test_step``'s logs, shaped for Keras' cross-replica reduction.

    With several workers Keras reduces each log with
    ``strategy.reduce("MEAN", value, axis=0)``, which needs a batch axis: a
    scalar fails ("Invalid reduction dimension 0 for input with 0
    dimensions"). As ``[1]`` tensors the reduction is the mean over the
    replicas, the same as Keras' mean of the local results under
    ``MirroredStrategy``; anywhere else the logs are returned unchanged.
    """
    if not in_multi_worker_mode():
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


class MultiWorkerFit:
    """Mixin for a ``keras.Model`` subclass: ``fit`` / ``evaluate`` under ``MultiWorkerMirroredStrategy``.

    Keras 3's TensorFlow trainer builds a model inside a strategy by reducing
    the first distributed batch with ``strategy.reduce("MEAN", batch)``, which
    fails with several workers (keras-team/keras#20585, tensorflow/tensorflow#72388:
    "Attempt to convert a value (PerReplica ...) to a Tensor"). Any replica's
    batch has the shapes and dtypes that build needs, so this mixin builds with
    the first local replica's batch instead. The model's steps return their
    logs through :func:`replica_logs`.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if iterator is not None and in_multi_worker_mode(strategy):
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: strategy.experimental_local_results(value)[0]
                    if isinstance(value, tf.distribute.DistributedValues) else value,
                    next(batches),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


class MultiWorkerClassifier(MultiWorkerFit, keras.Model):
    """A classifier wrapped so that Keras' own ``fit`` / ``evaluate`` run on several workers (:class:`MultiWorkerFit`).

    It shares the classifier's layers and weights; ``compile`` it with a loss
    and metrics as the classifier itself would be.
    """

    def __init__(self, classifier, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        if getattr(classifier, "built", False):
            self.built = True

    def call(self, inputs, training=None):
        return self.classifier(inputs, training=training)

    def train_step(self, data):
        return replica_logs(super().train_step(data))

    def test_step(self, data):
        return replica_logs(super().test_step(data))
