"""Keras step functions compiled once per canvas.

Why not Keras' own: its ``train_function`` / ``test_function`` /
``predict_function`` are single ``tf.function`` graphs traced with
``reduce_retracing=True`` and fed from an iterator. Images come on a small set
of static canvases (``data.canvases``); once a second canvas arrives, Keras
relaxes H and W to ``None``. The detector needs them static: the anchors, the
target encoder's window and the post-processing are NumPy constants built per
canvas, and XLA / TPUs compile static shapes only.

So the batch is taken from the iterator eagerly, its signature (the shape and
dtype of every input tensor, per replica) picks a ``tf.function`` made for that
signature alone, and that function runs the step under the model's
distribution strategy (``jit_compile`` as compiled). Each canvas is traced and
compiled exactly once, whatever order the canvases come in; a different batch
size (a partial last batch) is a signature of its own. The eager ``next()``
and the signature look-up cost no measurable time: a steady step is as fast as
with Keras' own function on one canvas (``benchmarks/canvases.py``: 1.01x for
R-50; 0.87x for the tiny test model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

# Keras' reduction of per-replica step outputs ("first"/"mean" for metrics,
# "concat" for predictions, multi-worker and multi-host TPU aware): reused so
# results reduce exactly as they do in Keras' own step functions.
from keras.src.backend.tensorflow.trainer import reduce_per_replica

Signature = tuple


def _leaf_signature(value: Any) -> Any:
    if isinstance(value, tf.distribute.DistributedValues):
        return tuple(_leaf_signature(v) for v in value.values)
    if isinstance(value, (tf.Tensor, tf.Variable, np.ndarray)):
        return (tuple(value.shape), value.dtype.name)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return type(value).__name__


def input_signature(data: Any) -> Signature:
    """Hashable ``(structure, shapes and dtypes)`` of a step's input batch."""
    leaves = tf.nest.flatten(data)
    structure = tf.nest.map_structure(lambda _: 0, data)
    return (repr(structure), tuple(_leaf_signature(v) for v in leaves))


class CanvasStepFunction:
    """A step function compiled once per input signature.

    Args:
        step: ``step(data) -> outputs`` run on each replica (the model's
            ``train_step``, ``test_step`` or ``predict_step``).
        strategy: callable returning the distribution strategy to run under.
        jit_compile: compile each signature's function with XLA.
        reduction: how per-replica outputs are reduced (Keras' names:
            ``"auto"`` for metrics, ``"concat"`` for predictions).
        eager: run ``step`` without ``tf.function`` (``run_eagerly=True``).
    """

    def __init__(
        self,
        step: Callable[[Any], Any],
        strategy: Callable[[], tf.distribute.Strategy],
        jit_compile: bool,
        reduction: str,
        eager: bool = False,
    ):
        self._step = step
        self._strategy = strategy
        self._jit_compile = bool(jit_compile)
        self._reduction = reduction
        self._eager = eager
        self._functions: dict[Signature, Callable] = {}

    def _run(self, data):
        strategy = self._strategy()
        outputs = strategy.run(self._step, args=(data,))
        if self._reduction == "auto" and isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            # Keras (3.15) reduces with axis=0 there, which fails on scalar metrics.
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), outputs)
        return reduce_per_replica(outputs, strategy, reduction=self._reduction)

    def __call__(self, data: Any) -> Any:
        """Run one step on an eager batch (tensors, arrays or per-replica values)."""
        if self._eager:
            return self._run(data)
        key = input_signature(data)
        function = self._functions.get(key)
        if function is None:
            function = tf.function(self._run, jit_compile=self._jit_compile, autograph=False)
            # One trace per signature is the design: TensorFlow's warning about
            # "frequent retracing" (more than 5 functions of one method) is not.
            function._omit_frequent_tracing_warning = True
            self._functions[key] = function
        return function(data)

    @property
    def signatures(self) -> list[Signature]:
        """The input signatures compiled so far, in order of first use."""
        return list(self._functions)

    def tracing_counts(self) -> list[int]:
        """Traces of each signature's function (1 each when nothing retraced)."""
        return [f.experimental_get_tracing_count() for f in self._functions.values()]


def _next_batches(iterator: Iterator, count: int) -> list:
    """Up to ``count`` batches; ``StopIteration`` only when there is none."""
    batches = []
    for _ in range(count):
        try:
            batches.append(next(iterator))
        except (StopIteration, tf.errors.OutOfRangeError):
            break
    if not batches:
        raise StopIteration
    return batches


def make_iterator_function(step: CanvasStepFunction, steps_per_execution: int):
    """Keras' ``train_function`` / ``test_function`` contract: take
    ``steps_per_execution`` batches from ``iterator`` (a dataset iterator, a
    distributed iterator or a generator), run a step on each, return the last
    step's logs; ``StopIteration`` when the iterator is exhausted."""

    def function(iterator):
        outputs = None
        for data in _next_batches(iter(iterator), steps_per_execution):
            outputs = step(data)
        return outputs

    function.step = step
    return function


def make_predict_function(step: CanvasStepFunction):
    """Keras' ``predict_function`` contract: ``data`` is a list of batches
    (``steps_per_execution`` of them, each as the iterator yields it, an
    ``(x,)`` tuple for ``predict_on_batch``); outputs are concatenated."""

    def function(data):
        outputs = [step(batch) for batch in data]
        if len(outputs) == 1:
            return outputs[0]
        return tf.nest.map_structure(lambda *t: tf.concat(t, axis=0), *outputs)

    function.step = step
    return function
