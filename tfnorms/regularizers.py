"""Norm decay: penalising the exact l1 / l_inf operator norm of a layer.

* :class:`NormDecay`: a Keras ``Regularizer``. Its penalty is ``factor`` times
  the exact operator norm of the kernel, so the gradient Keras adds is
  ``factor * sign(W)`` on the maximal group and zero elsewhere (the exact
  sub-gradient; Liang & Huang, AAAI 2021).
* :class:`NormDecayMomentum`: an optimizer wrapper adding the decaying memory
  of earlier maximal groups that Liang & Huang's code uses (methods.md §1.5).
* :func:`configure_norm_decay`: fills in the stride, padding and input size
  of every Conv2D regularised by :class:`NormDecay` from a built model.

The maths lives in :mod:`tfnorms.norms`; this module only adapts it to Keras.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfnorms import norms
from tfnorms.norms import geometry
from tfnorms.norms.operator_norms import normalize_input_shape

__all__ = ["NormDecay", "NormDecayMomentum", "configure_norm_decay"]


# ---------------------------------------------------------------- arguments


def _is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def validate_ords(ord, allowed=(1, np.inf), name="ord"):
    """Returns a tuple of distinct ords from ``1``, ``numpy.inf`` (or "inf"), or a sequence of them."""
    names = {1: "1", 2: "2", np.inf: "numpy.inf"}
    expected = ", ".join(names[a] for a in allowed)
    values = list(ord) if isinstance(ord, (list, tuple)) else [ord]
    result = []
    for value in values:
        if isinstance(value, str) and value.lower() in ("inf", "linf", "numpy.inf"):
            value = np.inf
        if not _is_number(value) or not any(value == a for a in allowed):
            result = None
            break
        value = next(a for a in allowed if value == a)
        if value not in result:
            result.append(value)
    if not result:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected one of {expected}, or a "
            f"list of them. Received: {name}={ord!r}"
        )
    return tuple(result)


def ords_to_config(ords):
    """JSON-safe form of a tuple of ords (``numpy.inf`` becomes ``"inf"``)."""
    as_json = ["inf" if o == np.inf else int(o) for o in ords]
    return as_json[0] if len(as_json) == 1 else as_json


def ord_name(ord):
    """``1 -> "l1"``, ``2 -> "l2"``, ``inf -> "linf"``."""
    return "linf" if ord == np.inf else f"l{int(ord)}"


def validate_nonnegative(value, name, strict=False):
    if not _is_number(value) or not (value > 0 if strict else value >= 0) or not np.isfinite(value):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a finite number {bound}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def validate_conv_geometry(input_shape, strides, padding, dilation_rate, groups):
    """Validates conv geometry arguments; returns them in a JSON-friendly normal form."""
    shape = normalize_input_shape(None if input_shape is None else tuple(input_shape))
    strides, dilation_rate = geometry.check_stride_dilation(
        tuple(strides) if isinstance(strides, list) else strides,
        tuple(dilation_rate) if isinstance(dilation_rate, list) else dilation_rate,
    )
    pads = geometry.normalize_padding(padding)
    if isinstance(pads[0], str):
        if pads[0] != pads[1]:
            raise ValueError(f"Invalid value for argument `padding`. Received: padding={padding!r}")
        padding = pads[0]
    else:
        padding = tuple(tuple(p) for p in pads)
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(
            f"Invalid value for argument `groups`. Expected a positive int. Received: groups={groups!r}"
        )
    return dict(
        input_shape=None if shape == (None, None) else shape,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        groups=int(groups),
    )


def validate_depthwise(depthwise, groups):
    """Checks the ``depthwise`` switch of an adapter; ``groups`` must stay 1 with it (it is implied)."""
    if not isinstance(depthwise, (bool, np.bool_)):
        raise ValueError(
            f"Invalid value for argument `depthwise`. Expected True or False. Received: depthwise={depthwise!r}"
        )
    if depthwise and groups != 1:
        raise ValueError(
            "Invalid value for argument `groups`. A depthwise kernel implies one group per input "
            f"channel: leave groups=1 with depthwise=True. Received: groups={groups!r}"
        )
    return bool(depthwise)


def operator_kernel(kernel, geometry, depthwise):
    """A kernel in the layout :mod:`tfnorms.norms` expects, the geometry to pass with it, and the way back.

    Dense kernels come back unchanged with no geometry; Conv2D kernels with
    ``geometry``; DepthwiseConv2D kernels (``depthwise=True``) as the
    equivalent grouped Conv2D kernel with ``groups=c_in``
    (:func:`tfnorms.norms.depthwise_as_grouped`).

    Returns:
        ``(kernel, geometry, back)`` where ``back`` maps a tensor shaped like
        the returned kernel (a projection, a mask) to the original layout.
    """
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


def geometry_to_config(geom):
    """JSON-safe copy of a validated geometry dict (tuples become lists)."""

    def listify(value):
        return [listify(v) for v in value] if isinstance(value, (tuple, list)) else value

    return {key: listify(value) for key, value in geom.items()}


def kernel_operator_norm(kernel, ord, geom):
    """Dispatches to the Dense (rank 2) or Conv2D (rank 4) norm of :mod:`tfnorms.norms`.

    Depthwise kernels go through :func:`operator_kernel` first.
    """
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


def conv_layers_with(model, predicate):
    """``(layer, variable, obj)`` for every variable of ``model`` whose attribute matches."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for variable in list(getattr(layer, "_trainable_variables", [])) + list(
            getattr(layer, "_non_trainable_variables", [])
        ):
            found = predicate(variable)
            if found is not None:
                yield layer, variable, found


CONV_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def kernel_attribute(layer, kind):
    """The constructor argument that holds a conv/dense layer's kernel ``kind`` ("regularizer" or "constraint")."""
    prefix = "depthwise" if isinstance(layer, keras.layers.DepthwiseConv2D) else "kernel"
    return f"{prefix}_{kind}"


def layer_geometry_config(layer, with_padding=True):
    """The geometry arguments of :class:`NormDecay` and the constraints, read from a built conv layer.

    Reads :func:`tfnorms.norms.conv_geometry` (which folds a preceding
    ``ZeroPadding2D``) into JSON-safe values; an unknown input size becomes
    ``None``. DepthwiseConv2D layers get ``depthwise=True`` and ``groups=1``.
    """
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


def reset_compiled_functions(model):
    """Makes ``fit``/``evaluate`` re-trace after a regularizer or constraint changed."""
    for attribute in ("train_function", "test_function"):
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)


# ---------------------------------------------------------------- NormDecay


@keras.saving.register_keras_serializable(package="tfnorms")
class NormDecay(keras.regularizers.Regularizer):
    """Penalises ``factor`` times the exact l1 and/or l_inf operator norm of a kernel.

    Works on ``Conv2D`` kernels ``(kh, kw, c_in // groups, c_out)``,
    ``Dense`` kernels ``(in, out)`` and, with ``depthwise=True``,
    ``DepthwiseConv2D`` kernels ``(kh, kw, c_in, multiplier)``. The penalty
    is the exact norm (not a bound), so the gradient Keras adds to the kernel is the exact
    sub-gradient ``factor * sign(W)`` on the maximal group (for ``ord=1``: one
    input channel and one stride class of kernel positions, all output
    channels; for ``ord=inf``: one output filter) and zero elsewhere. With
    ``ord=(1, numpy.inf)`` both norms are penalised (summed).

    **Strided convolutions.** A kernel does not tell its stride. Pass the
    layer's ``strides`` (and ``padding``, ``dilation_rate``, ``groups``, and
    ``input_shape`` for small feature maps), or call
    :func:`configure_norm_decay` on the built model, which reads them from
    every layer. Without them the layer is treated as a stride-1 convolution
    on a large input: the l1 penalty is then the stride-1 norm, which
    overestimates a strided layer's norm and pushes on the whole input channel
    instead of its maximal stride class. The l_inf norm and Dense kernels do
    not depend on the geometry (except on feature maps smaller than the
    kernel, where ``input_shape`` makes it exact).

    **Momentum.** This regularizer is stateless. Liang & Huang's code also keeps a
    decaying memory of earlier maximal groups; wrap the optimizer in
    :class:`NormDecayMomentum` to get it on top of this penalty.

    Args:
        factor: penalty strength ``beta`` (>= 0). Liang & Huang sweep
            1e-5 ... 1e-1; their README uses 1e-3.
        ord: ``1``, ``numpy.inf`` (or ``"inf"``), or a list of both.
        input_shape: spatial input size ``(H, W)`` of a convolution, or
            ``None`` for the large-input closed form.
        strides: the convolution's strides (int or pair).
        padding: ``"same"``, ``"valid"`` or ``((top, bottom), (left, right))``.
        dilation_rate: int or pair.
        groups: the convolution's ``groups``.
        depthwise: the kernel is a ``DepthwiseConv2D`` kernel (a rank-4
            kernel does not tell which layer it belongs to: without this
            switch it is read as a Conv2D kernel). :func:`configure_norm_decay`
            sets it; ``groups`` stays 1 (one group per input channel is implied).

    Example:
        >>> import keras, numpy as np, tfnorms
        >>> conv = keras.layers.Conv2D(
        ...     8, 3, kernel_regularizer=tfnorms.NormDecay(1e-3, ord=np.inf))
        >>> depthwise = keras.layers.DepthwiseConv2D(
        ...     3, depthwise_regularizer=tfnorms.NormDecay(1e-3, depthwise=True))
        >>> dense = keras.layers.Dense(
        ...     10, kernel_regularizer=tfnorms.NormDecay(1e-3, ord=[1, "inf"]))
    """

    def __init__(
        self,
        factor=1e-3,
        ord=1,
        input_shape=None,
        strides=1,
        padding="same",
        dilation_rate=1,
        groups=1,
        depthwise=False,
    ):
        self.factor = validate_nonnegative(factor, "factor")
        self.ords = validate_ords(ord)
        self.geometry = validate_conv_geometry(input_shape, strides, padding, dilation_rate, groups)
        self.depthwise = validate_depthwise(depthwise, self.geometry["groups"])

    @property
    def ord(self):
        return self.ords[0] if len(self.ords) == 1 else self.ords

    def norm(self, x):
        """The (summed) operator norm(s) that this regularizer penalises, unscaled."""
        kernel, geom, _ = operator_kernel(tf.convert_to_tensor(x), self.geometry, self.depthwise)
        total = kernel_operator_norm(kernel, self.ords[0], geom)
        for ord in self.ords[1:]:
            total = total + kernel_operator_norm(kernel, ord, geom)
        return total

    def __call__(self, x):
        x = tf.convert_to_tensor(x)
        return self.factor * self.norm(x)

    def with_geometry(self, **geometry_args):
        """A copy with the given conv geometry (other arguments unchanged)."""
        config = self.get_config()
        config.update(geometry_args)
        return type(self).from_config(config)

    def get_config(self):
        return {
            "factor": self.factor,
            "ord": ords_to_config(self.ords),
            **geometry_to_config(self.geometry),
            "depthwise": self.depthwise,
        }


def configure_norm_decay(model):
    """Fills in the geometry of every :class:`NormDecay` of a built model.

    For every ``Conv2D`` or ``DepthwiseConv2D`` whose kernel carries a
    :class:`NormDecay`, reads the strides, padding (including a preceding ``ZeroPadding2D``, see
    :func:`tfnorms.norms.conv_geometry`), dilation, groups and the input size,
    marks depthwise kernels as such, and replaces the layer's regularizer by
    a configured copy (so a
    regularizer instance shared by several layers is safe). The geometry is
    part of the regularizer's config, so it survives ``model.save``. Dense
    kernels need nothing. Call it after the model is built and before
    ``fit`` (compiled train functions are reset so they pick up the change).

    Args:
        model: a built ``keras.Model``.

    Returns:
        A dict from kernel path to the configured regularizer.

    Raises:
        ValueError: if a :class:`NormDecay` sits on a weight other than a
            Conv2D, DepthwiseConv2D or Dense kernel (a bias, a BatchNorm
            ``gamma``, an RNN kernel, ...).

    Example:
        >>> model = keras.Sequential([keras.Input((32, 32, 3)),
        ...     keras.layers.Conv2D(8, 3, strides=2, kernel_regularizer=NormDecay())])
        >>> configured = configure_norm_decay(model)
        >>> list(configured.values())[0].geometry["strides"]
        (2, 2)
    """
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built: call it on an input first.")
    configured = {}
    for layer, variable, reg in conv_layers_with(
        model, lambda v: v.regularizer if isinstance(v.regularizer, NormDecay) else None
    ):
        if isinstance(layer, CONV_LAYERS) and variable is layer.kernel:
            new = reg.with_geometry(**layer_geometry_config(layer))
            setattr(layer, kernel_attribute(layer, "regularizer"), new)
        elif isinstance(layer, keras.layers.Dense) and variable is layer.kernel:
            new = reg
        else:
            raise ValueError(
                f"NormDecay on weight {variable.path!r} of layer {layer.name!r} "
                f"({type(layer).__name__}): supported are Conv2D, DepthwiseConv2D and Dense kernels."
            )
        variable.regularizer = new
        configured[variable.path] = new
    reset_compiled_functions(model)
    return configured


def add_norm_decay(model, factor=1e-3, ord=1):
    """Puts a configured :class:`NormDecay` on every Conv2D, DepthwiseConv2D and Dense kernel of a built model.

    The one-call form of ``kernel_regularizer=NormDecay(...)`` on each layer
    followed by :func:`configure_norm_decay` (which it calls).

    Args:
        model: a built ``keras.Model``.
        factor: penalty strength.
        ord: ``1``, ``numpy.inf`` or both as a list.

    Returns:
        The dict of :func:`configure_norm_decay`.

    Example:
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, strides=2),
        ...                           keras.layers.Flatten(), keras.layers.Dense(2)])
        >>> len(add_norm_decay(model, 1e-4, ord=[1, "inf"]))
        2
    """
    template = NormDecay(factor, ord=ord)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (*CONV_LAYERS, keras.layers.Dense)):
            layer.kernel.regularizer = template
    return configure_norm_decay(model)


# ---------------------------------------------------------------- momentum


@keras.saving.register_keras_serializable(package="tfnorms")
class NormDecayMomentum(keras.optimizers.Optimizer):
    """Optimizer wrapper adding Liang & Huang's decaying memory of maximal groups.

    Liang & Huang's code (methods.md §1.5, "what the code actually does")
    keeps a buffer ``h`` per regularised kernel and, every step, on the
    pre-step weights:

        h <- momentum * h;   h[G] <- sign(W[G]);   grad <- grad + beta * h

    with ``G`` the current maximal group (an overwrite, not an average).
    A plain :class:`NormDecay` contributes only ``beta * sign(W[G])``; this
    wrapper adds the rest, ``beta * momentum * h_old`` outside ``G``, so that
    the total is exactly the code's update. It finds the regularised kernels
    by their :class:`NormDecay` (which supplies ``beta = factor``, ``ord`` and
    the conv geometry) and keeps ``h`` as non-trainable optimizer variables,
    one per kernel and ord, checkpointed and saved with the optimizer.

    **Difference to the plain regularizer.** Without this wrapper a group is
    pushed down only while it is the maximal one, and the maximum can
    oscillate between groups. With it, groups that were maximal recently keep
    being pushed with weights ``beta * momentum**age``, which lowers several
    near-maximal groups together (the paper's motivation). With
    ``momentum=0`` the wrapper changes nothing.

    Distribution, XLA, mixed precision: the memory update runs inside the
    optimizer's ``apply`` (in the compiled train step). Under
    ``tf.distribute`` the gradients are still per replica there, so the added
    term is divided by the number of replicas before Keras sums them, and
    the buffers use ``only_first_replica`` aggregation. Under
    ``mixed_float16`` Keras wraps this optimizer in its
    ``LossScaleOptimizer``, which unscales the gradients before they reach it.

    Args:
        optimizer: the optimizer to wrap (instance, name or config), e.g.
            ``keras.optimizers.SGD(0.01, momentum=0.9)`` as in the paper.
        momentum: decay of the memory (``mmt``; the paper uses 0.5), in
            ``[0, 1)``.
        name: optional name.

    Example:
        >>> model = keras.Sequential([keras.Input((8, 8, 3)),
        ...     keras.layers.Conv2D(4, 3, kernel_regularizer=NormDecay(1e-3)),
        ...     keras.layers.Flatten(), keras.layers.Dense(2)])
        >>> model.compile(
        ...     optimizer=NormDecayMomentum(keras.optimizers.SGD(0.01, momentum=0.9)),
        ...     loss="sparse_categorical_crossentropy")
    """

    def __init__(self, optimizer, momentum=0.5, name=None, **kwargs):
        if kwargs:
            raise ValueError(
                f"NormDecayMomentum does not accept {sorted(kwargs)}: set them on the wrapped optimizer."
            )
        if not _is_number(momentum) or not 0 <= momentum < 1:
            raise ValueError(
                "Invalid value for argument `momentum`. Expected a number in [0, 1). "
                f"Received: momentum={momentum!r}"
            )
        inner = keras.optimizers.get(optimizer)
        if not isinstance(inner, keras.optimizers.Optimizer):
            raise ValueError(
                "Invalid value for argument `optimizer`. Expected a Keras optimizer. "
                f"Received: optimizer={optimizer!r}"
            )
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner
        self.momentum = float(momentum)
        object.__setattr__(self, "_memory", {})  # slots are tracked by add_variable

    def build(self, var_list):
        memory = {}
        for variable in var_list:
            regularizer = getattr(variable, "regularizer", None)
            if not isinstance(regularizer, NormDecay):
                continue
            slots = []
            for ord in regularizer.ords:
                slots.append(
                    self.add_variable(
                        shape=variable.shape,
                        dtype=variable.dtype,
                        initializer="zeros",
                        aggregation="only_first_replica",
                        name=f"{variable.path.replace('/', '_')}_norm_decay_memory_{ord_name(ord)}",
                    )
                )
            memory[self._var_key(variable)] = slots
        object.__setattr__(self, "_memory", memory)
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return self._variables[:] + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def _with_memory(self, grads, trainable_variables):
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        updated = []
        for grad, variable in zip(grads, trainable_variables):
            slots = self._memory.get(self._var_key(variable))
            if grad is None or not slots:
                updated.append(grad)
                continue
            regularizer = variable.regularizer
            weights = tf.convert_to_tensor(variable)
            sign = tf.sign(weights)
            extra = tf.zeros_like(weights)
            kernel, geom, back = operator_kernel(weights, regularizer.geometry, regularizer.depthwise)
            for ord, slot in zip(regularizer.ords, slots):
                mask = back(norms.max_group_mask(kernel, ord, **geom))
                kept = self.momentum * tf.convert_to_tensor(slot) * (1.0 - mask)
                # The regularizer's own gradient supplies factor * mask * sign.
                extra = extra + kept
                slot.assign(kept + mask * sign)
            extra = (regularizer.factor / replicas) * extra
            updated.append(grad + tf.cast(extra, grad.dtype))
        return updated

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            if not self.built:
                raise ValueError("NormDecayMomentum: pass `trainable_variables` on the first call.")
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            with keras.name_scope(self.name):
                self.build(trainable_variables)
            self.built = True
        grads = self._with_memory(list(grads), trainable_variables)
        self.inner_optimizer.apply(grads, trainable_variables)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise NotImplementedError("NormDecayMomentum supports the TensorFlow backend's stateful `apply` only.")

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "momentum": self.momentum,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)
