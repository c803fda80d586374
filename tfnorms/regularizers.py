"""Norm decay: penalising the exact l1 / l_inf operator norm of a layer.

* :class:`NormDecay`: a Keras ``Regularizer``. Its penalty is ``factor`` times
  the exact operator norm of the kernel, so the gradient Keras adds is
  ``factor * sign(W)`` on the maximal group and zero elsewhere (the exact
  sub-gradient; Liang & Huang, AAAI 2021).
* :class:`NormDecayMomentum`: an optimizer wrapper adding the decaying memory
  of earlier maximal groups that Liang & Huang's code uses (docs/theory.md#norm-decay-momentum).
* :class:`Sum`: a saved, bindable sum of regularizers (norm decay plus weight
  decay, say) that tfnorms looks through.
* :func:`add_norm_decay`: norm decay on every kernel of a built model.

A kernel does not tell its layer's strides, padding or input size:
``tfnorms.bind(model)`` gives them to every :class:`NormDecay` (the trainer and
the tfnorms callbacks call it). The maths lives in :mod:`tfnorms.norms`; this
module only adapts it to Keras.
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from tfnorms import _args, _keras, norms

__all__ = ["NormDecay", "NormDecayMomentum", "Sum", "add_norm_decay", "configure_norm_decay", "norm_decay_terms"]


# ---------------------------------------------------------------- NormDecay


@keras.saving.register_keras_serializable(package="tfnorms")
class NormDecay(_keras.LayerGeometry, keras.regularizers.Regularizer):
    """Penalises ``factor`` times the exact l1 and/or l_inf operator norm of a kernel.

    Works on ``Conv2D`` kernels ``(kh, kw, c_in // groups, c_out)``,
    ``Dense`` kernels ``(in, out)`` and ``DepthwiseConv2D`` kernels
    ``(kh, kw, c_in, multiplier)``. The penalty is the exact norm (not a
    bound), so the gradient Keras adds to the kernel is the exact
    sub-gradient ``factor * sign(W)`` on the maximal group (for ``ord=1``:
    one input channel and one stride class of kernel positions, all output
    channels; for ``ord=inf``: one output filter) and zero elsewhere. With
    ``ord=(1, numpy.inf)`` both norms are penalised (summed).

    **Binding.** A kernel does not tell its layer's strides, padding,
    dilation, input size or whether it is depthwise. ``tfnorms.bind(model)``
    reads them from every layer into its regularizer (and the binding is
    saved with the model); :class:`tfnorms.AdversarialTrainer` and the
    tfnorms callbacks call it themselves. An unbound regularizer on a conv
    kernel warns once (``tfnorms.UnboundWarning``, naming the weight) and
    penalises the stride-1 norm on a large input. Dense kernels need no
    binding. The geometry arguments below are for manual use.

    **Momentum.** This regularizer is stateless. Liang & Huang's code also keeps a
    decaying memory of earlier maximal groups; wrap the optimizer in
    :class:`NormDecayMomentum` to get it on top of this penalty.

    Args:
        factor: penalty strength (>= 0). Liang & Huang sweep 1e-5 ... 1e-1;
            their README uses 1e-3.
        ord: ``1``, ``numpy.inf`` (or ``"inf"``), or a list of both.
        input_shape: spatial input size ``(H, W)`` of a convolution, or
            ``None`` for the large-input closed form.
        strides: the convolution's strides (int or pair).
        padding: ``"same"``, ``"valid"`` or ``((top, bottom), (left, right))``.
        dilation_rate: int or pair.
        groups: the convolution's ``groups``.
        depthwise: the kernel is a ``DepthwiseConv2D`` kernel (``groups``
            stays 1: one group per input channel is implied).

    Example:
        >>> import keras, numpy as np, tfnorms
        >>> model = keras.Sequential([keras.Input((9, 9, 1)),
        ...     keras.layers.Conv2D(4, 3, strides=2, kernel_regularizer=tfnorms.NormDecay(1e-3)),
        ...     keras.layers.Flatten(),
        ...     keras.layers.Dense(10, kernel_regularizer=tfnorms.NormDecay(1e-3, ord=[1, "inf"]))])
        >>> _ = tfnorms.bind(model)
        >>> model.layers[0].kernel_regularizer.geometry["strides"]
        (2, 2)
    """

    def __init__(self, factor=1e-3, ord=1, input_shape=None, strides=None, padding=None, dilation_rate=None,
                 groups=None, depthwise=None):
        self.factor = _args.nonnegative(factor, "factor")
        self.ords = _args.ords(ord)
        self._init_geometry(input_shape, strides, padding, dilation_rate, groups, depthwise)

    @property
    def ord(self):
        return self.ords[0] if len(self.ords) == 1 else self.ords

    def norm(self, x):
        """The (summed) operator norm(s) that this regularizer penalises, unscaled."""
        kernel, geom, _ = self.operator(x)
        total = _keras.kernel_operator_norm(kernel, self.ords[0], geom)
        for ord in self.ords[1:]:
            total = total + _keras.kernel_operator_norm(kernel, ord, geom)
        return total

    def __call__(self, x):
        return self.factor * self.norm(x)

    def get_config(self):
        return {"factor": self.factor, "ord": _args.ords_to_config(self.ords), **self._geometry_config()}


@keras.saving.register_keras_serializable(package="tfnorms")
class Sum(keras.regularizers.Regularizer):
    """The sum of several regularizers, saved with the model and seen through by tfnorms.

    ``tfnorms.bind``, :class:`NormDecayMomentum` and the callbacks find the
    :class:`NormDecay` terms inside it (:func:`norm_decay_terms`). Nested sums
    are flattened.

    Args:
        regularizers: a list of Keras regularizers (instances, names or configs).

    Example:
        >>> import keras, numpy as np, tfnorms
        >>> total = tfnorms.regularizers.Sum([tfnorms.NormDecay(1e-3), keras.regularizers.L2(1e-4)])
        >>> round(float(total(np.ones((2, 3), "float32"))), 6)  # 1e-3 * 3 + 1e-4 * 6
        0.0036
    """

    def __init__(self, regularizers):
        if not isinstance(regularizers, (list, tuple)) or not regularizers:
            raise _args.invalid("regularizers", "a non-empty list of Keras regularizers", regularizers)
        terms = []
        for regularizer in regularizers:
            regularizer = keras.regularizers.get(regularizer)
            if not callable(regularizer):
                raise _args.invalid("regularizers", "a non-empty list of Keras regularizers", regularizers)
            terms.extend(regularizer.regularizers if isinstance(regularizer, Sum) else [regularizer])
        self.regularizers = terms

    @classmethod
    def of(cls, *regularizers):
        """The sum of the given regularizers, ``None`` entries skipped; a single one is returned as it is."""
        present = [r for r in regularizers if r is not None]
        if len(present) == 1:
            return present[0]
        return cls(present) if present else None

    def __call__(self, x):
        total = self.regularizers[0](x)
        for regularizer in self.regularizers[1:]:
            total = total + regularizer(x)
        return total

    def bind_to(self, layer, variable):
        """This sum with each term bound to ``layer`` (itself if nothing changes)."""
        terms = [
            term.bind_to(layer, variable) if hasattr(term, "bind_to") else term for term in self.regularizers
        ]
        if all(new is old for new, old in zip(terms, self.regularizers)):
            return self
        return Sum(terms)

    def get_config(self):
        return {"regularizers": [keras.saving.serialize_keras_object(r) for r in self.regularizers]}

    @classmethod
    def from_config(cls, config):
        return cls([keras.saving.deserialize_keras_object(r) for r in config["regularizers"]])


def norm_decay_terms(regularizer):
    """The :class:`NormDecay` terms of a regularizer (itself, or the terms of a :class:`Sum`).

    Example:
        >>> import keras
        >>> len(norm_decay_terms(Sum([NormDecay(), keras.regularizers.L2(1e-4)])))
        1
    """
    if isinstance(regularizer, NormDecay):
        return [regularizer]
    if isinstance(regularizer, Sum):
        return [r for r in regularizer.regularizers if isinstance(r, NormDecay)]
    return []


def configure_norm_decay(model):
    """Deprecated: ``tfnorms.bind(model)`` binds every regularizer and constraint.

    Returns:
        ``{kernel path: regularizer}`` for every weight with a :class:`NormDecay`.
    """
    warnings.warn("configure_norm_decay is deprecated: use tfnorms.bind(model).", DeprecationWarning, stacklevel=2)
    bound = _keras.bind(model)["regularizers"]
    return {path: reg for path, reg in bound.items() if norm_decay_terms(reg)}


def add_norm_decay(model, factor=1e-3, ord=1):
    """Adds a bound :class:`NormDecay` to every Conv2D, DepthwiseConv2D and Dense kernel of a built model.

    An existing regularizer on a kernel is kept (summed with :class:`Sum`).
    The regularizers are set where Keras saves them, so they survive
    ``model.save`` / ``keras.models.load_model``.

    Args:
        model: a built ``keras.Model``.
        factor: penalty strength.
        ord: ``1``, ``numpy.inf`` or both as a list.

    Returns:
        ``{kernel path: regularizer}`` for every kernel that now carries norm decay.

    Example:
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, strides=2),
        ...                           keras.layers.Flatten(), keras.layers.Dense(2)])
        >>> len(add_norm_decay(model, 1e-4, ord=[1, "inf"]))
        2
    """
    template = NormDecay(factor, ord=ord)
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built: call it on an input (or build it) first.")
    for layer in _keras.flatten_layers(model):
        if isinstance(layer, (*_keras.CONV_LAYERS, keras.layers.Dense)):
            _keras.attach(layer, layer.kernel, "regularizer", Sum.of(layer.kernel.regularizer, template))
    bound = _keras.bind(model)["regularizers"]
    return {path: reg for path, reg in bound.items() if norm_decay_terms(reg)}


# ---------------------------------------------------------------- momentum


@keras.saving.register_keras_serializable(package="tfnorms")
class NormDecayMomentum(keras.optimizers.Optimizer):
    """Optimizer wrapper adding Liang & Huang's decaying memory of maximal groups.

    Liang & Huang's released code (not the paper's Algorithm 1; see
    docs/theory.md#norm-decay-momentum) keeps a buffer ``h`` per regularised
    kernel and, every step, on the pre-step weights:

        h <- momentum * h;   h[G] <- sign(W[G]);   grad <- grad + factor * h

    with ``G`` the current maximal group (an overwrite, not an average).
    A plain :class:`NormDecay` contributes only ``factor * sign(W[G])``; this
    wrapper adds the rest, ``factor * momentum * h_old`` outside ``G``, so that
    the total is exactly the code's update. It finds the regularised kernels
    by their :class:`NormDecay` (also inside a :class:`Sum`, e.g. with weight
    decay), which supplies ``factor``, ``ord`` and the conv geometry, and keeps
    ``h`` as non-trainable optimizer variables, one per kernel and ord,
    checkpointed and saved with the optimizer. Finding no NormDecay at all, it
    warns that it changes nothing.

    **Difference to the plain regularizer.** Without this wrapper a group is
    pushed down only while it is the maximal one, and the maximum can
    oscillate between groups. With it, groups that were maximal recently keep
    being pushed with weights ``factor * momentum**age``, which lowers several
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
        momentum = _args.number(momentum, "momentum", low=0, high=1, high_open=True)
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
            slots = []
            for index, term in enumerate(norm_decay_terms(getattr(variable, "regularizer", None))):
                suffix = f"_{index}" if index else ""
                for ord in term.ords:
                    slots.append(
                        self.add_variable(
                            shape=variable.shape,
                            dtype=variable.dtype,
                            initializer="zeros",
                            aggregation="only_first_replica",
                            name=f"{variable.path.replace('/', '_')}_norm_decay_memory_{_args.ord_name(ord)}{suffix}",
                        )
                    )
            if slots:
                memory[_keras.variable_key(self, variable)] = slots
        if not memory:
            warnings.warn(
                "NormDecayMomentum found no NormDecay regularizer on the variables it optimizes, so it "
                "changes nothing: put tfnorms.NormDecay on the kernels (e.g. "
                "tfnorms.regularizers.add_norm_decay(model, factor)) before the first training step.",
                stacklevel=2,
            )
        object.__setattr__(self, "_memory", memory)
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return _keras.optimizer_own_variables(self) + self.inner_optimizer.variables

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

    def _memory_term(self, variable, slots):
        """The code's extra gradient ``factor * momentum * h_old`` outside the maximal groups; updates ``h``."""
        terms = [(term, ord) for term in norm_decay_terms(variable.regularizer) for ord in term.ords]
        if len(terms) != len(slots):
            raise ValueError(
                f"NormDecayMomentum: the NormDecay regularizers of {variable.path!r} changed after the "
                "optimizer was built. Put norm decay (and weight decay) on the model before compiling."
            )
        weights = tf.convert_to_tensor(variable)
        sign = tf.sign(weights)
        extra = tf.zeros_like(weights)
        for (term, ord), slot in zip(terms, slots):
            kernel, geom, back = term.operator(variable)
            mask = back(norms.max_group_mask(kernel, ord, **geom))
            kept = self.momentum * tf.convert_to_tensor(slot) * (1.0 - mask)
            # The regularizer's own gradient supplies factor * mask * sign.
            extra = extra + term.factor * kept
            slot.assign(kept + mask * sign)
        return extra

    def _with_memory(self, grads, trainable_variables):
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        updated = []
        for grad, variable in zip(grads, trainable_variables):
            slots = self._memory.get(_keras.variable_key(self, variable))
            if grad is None or not slots:
                updated.append(grad)
                continue
            extra = self._memory_term(variable, slots) / replicas
            updated.append(grad + tf.cast(extra, grad.dtype))
        return updated

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            if not self.built:
                raise ValueError("NormDecayMomentum: pass `trainable_variables` on the first call.")
            trainable_variables = _keras.optimizer_trainable_variables(self)
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
