"""The checks a config field declares: what its value must be, in a few words.

Every setting of :mod:`atss_tf.config.schema` names its check beside its
default::

    topk: int = setting(9, Range(ge=1))

and :func:`atss_tf.config.validation.validate` asks each check about its
field's value. A check is a small frozen object with two parts: ``accepts``
(is this value valid?) and ``expected`` (the words an error message puts after
*expected*: ``assigner.topk=0 (expected >= 1)``).

The vocabulary:

* :class:`OneOf`: one of a few choices (``one of ('atss', 'iou')``,
  ``float32 | mixed_float16``, ``'sqrt' or 'product'``).
* :class:`Range`: a number within bounds, each open or closed, optionally
  finite (``>= 1``, ``> 0``, ``in [0, 1)``).
* :class:`MultipleOf`: a positive multiple of a number (canvas sides).
* :class:`Items`: a tuple (at least ``min_len`` long, optionally strictly
  increasing) whose every number passes another check (``positive strides``).
* :class:`OrValue`: another check, or one special value (``-1`` for AUTOTUNE).
* :class:`Free`: any value its type admits, with the reason (paths, switches).
* :class:`FileSuffix`: a path ending in one of a few suffixes, or null
  (``train.init_from``: ``.keras`` or ``.pth``).
* :class:`Related`: checked together with other keys, by a rule of
  :data:`atss_tf.config.validation.RULES` (``train.accumulate_steps`` must
  divide ``data.batch_size``).

The types themselves (an int, a pair of floats) are enforced earlier, when a
dict becomes a dataclass (:mod:`atss_tf.config.conversion`).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

CHECK = "check"  # the metadata key of a field's check


class Check(abc.ABC):
    """What a setting's value must be (the base of every check)."""

    @abc.abstractmethod
    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is valid for the setting."""

    @property
    @abc.abstractmethod
    def expected(self) -> str:
        """What a valid value is, as an error message says it after *expected*."""

    def describe_items(self, noun: str) -> str:
        """``noun`` (plural) whose every item passes this check, for :class:`Items`."""
        return f"{noun}, each {self.expected}"


def setting(default: Any, check: Check) -> Any:
    """A dataclass field with ``default`` and its declared ``check``."""
    return dataclasses.field(default=default, metadata={CHECK: check})


def check_of(f: dataclasses.Field) -> Check | None:
    """The check a dataclass field declared with :func:`setting` (None: none)."""
    return f.metadata.get(CHECK)


def problem(key: str, value: Any, expected: str) -> str:
    """One invalid setting as error messages list it: ``key=value (expected ...)``."""
    return f"{key}={value!r} (expected {expected})"


def _same(value: Any, option: Any) -> bool:
    """``value == option``, without ``True == 1`` (a switch is not a number)."""
    return isinstance(value, bool) == isinstance(option, bool) and value == option


def _word(value: Any) -> str:
    """A choice as YAML writes it: ``null``, ``true``, ``auto``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _literal(value: Any) -> str:
    """A choice as YAML writes it, strings quoted: ``'imagenet'``, ``50``, ``null``."""
    return repr(value) if isinstance(value, str) else _word(value)


@dataclass(frozen=True)
class OneOf(Check):
    """One of ``options``; ``form`` is how the message lists them:
    ``"tuple"`` ``one of ('a', 'b')``, ``"bar"`` ``a | b``, ``"or"`` ``'a' or 'b'``
    (``18, 34, 50 or 101``; ``None`` is written ``null``)."""

    options: tuple[Any, ...]
    form: Literal["tuple", "bar", "or"] = "tuple"

    def accepts(self, value: Any) -> bool:
        return any(_same(value, option) for option in self.options)

    @property
    def expected(self) -> str:
        if self.form == "tuple":
            return f"one of {self.options!r}"
        if self.form == "bar":
            return " | ".join(_word(o) for o in self.options)
        words = [_literal(o) for o in self.options]
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


@dataclass(frozen=True)
class Range(Check):
    """A number within bounds: ``ge``/``gt`` below (closed/open), ``le``/``lt``
    above; ``finite`` also refuses inf and nan (nan fails any bound anyway).
    ``note`` follows the bounds in the message: ``>= 0 (0: no limit)``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = False
    note: str | None = None

    def accepts(self, value: Any) -> bool:
        if self.finite and not (isinstance(value, (int, float)) and math.isfinite(value)):
            return False
        try:
            return (
                (self.ge is None or value >= self.ge)
                and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le)
                and (self.lt is None or value < self.lt)
            )
        except TypeError:  # not a number at all
            return False

    @property
    def expected(self) -> str:
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt)
        high = (self.le, "]") if self.le is not None else (self.lt, ")")
        if low[1] is not None and high[0] is not None:
            text = f"in {low[0]}{low[1]}, {high[0]}{high[1]}"
        elif low[1] is not None:
            text = f"{'>=' if low[0] == '[' else '>'} {low[1]}"
        elif high[0] is not None:
            text = f"{'<=' if high[1] == ']' else '<'} {high[0]}"
        else:
            text = "a finite number" if self.finite else "a number"
        return f"{text} ({self.note})" if self.note else text

    def describe_items(self, noun: str) -> str:
        only = {k: v for k, v in (("ge", self.ge), ("gt", self.gt)) if v is not None}
        positive = self.le is None and self.lt is None and only in ({"gt": 0}, {"ge": 1})
        return f"positive {noun}" if positive else super().describe_items(noun)


@dataclass(frozen=True)
class MultipleOf(Check):
    """A positive multiple of ``step`` (canvas sides: 32)."""

    step: int

    def accepts(self, value: Any) -> bool:
        try:
            return value > 0 and value % self.step == 0
        except TypeError:
            return False

    @property
    def expected(self) -> str:
        return f"a positive multiple of {self.step}"

    def describe_items(self, noun: str) -> str:
        return f"{noun}, positive multiples of {self.step}"


def _numbers(value: Any) -> Iterator[Any]:
    """Every number inside nested tuples: ``((896, 1344),)`` -> 896, 1344."""
    for item in value:
        if isinstance(item, (tuple, list)):
            yield from _numbers(item)
        else:
            yield item


@dataclass(frozen=True)
class Items(Check):
    """A tuple of at least ``min_len`` items (numbers, or tuples of numbers)
    whose every number passes ``each``; ``increasing``: strictly increasing.
    The message names them ``noun`` and counts them ``quantity`` (``"one or
    more"``): ``one or more positive sizes``, ``strictly increasing positive
    steps``."""

    each: Check
    noun: str
    min_len: int = 0
    quantity: str = ""
    increasing: bool = False

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (tuple, list)) or len(value) < self.min_len:
            return False
        if not all(self.each.accepts(x) for x in _numbers(value)):
            return False
        return not self.increasing or all(b > a for a, b in zip(value, value[1:]))

    @property
    def expected(self) -> str:
        words = (self.quantity, "strictly increasing" if self.increasing else "")
        return " ".join([w for w in words if w] + [self.each.describe_items(self.noun)])


@dataclass(frozen=True)
class OrValue(Check):
    """``check``, or exactly ``value``, which means ``meaning``:
    ``>= 1, or -1 for tf.data.AUTOTUNE``."""

    check: Check
    value: Any
    meaning: str

    def accepts(self, value: Any) -> bool:
        return _same(value, self.value) or self.check.accepts(value)

    @property
    def expected(self) -> str:
        return f"{self.check.expected}, or {_literal(self.value)} for {self.meaning}"


@dataclass(frozen=True)
class Free(Check):
    """Any value the field's type admits; ``why`` says why nothing more is asked
    (a path, a switch, a seed)."""

    why: str

    def accepts(self, value: Any) -> bool:
        return True

    @property
    def expected(self) -> str:
        return f"anything ({self.why})"


@dataclass(frozen=True)
class FileSuffix(Check):
    """A path (local or remote) whose name ends in one of ``suffixes``
    (``.keras``), or null."""

    suffixes: tuple[str, ...]
    what: str = "a file"

    def accepts(self, value: Any) -> bool:
        return value is None or (isinstance(value, str) and value.endswith(self.suffixes))

    @property
    def expected(self) -> str:
        return f"{self.what} ending in {' or '.join(self.suffixes)}; null: none"


@dataclass(frozen=True)
class Related(Check):
    """Valid or not only together with ``keys`` (``"data.batch_size"``): a rule of
    :data:`atss_tf.config.validation.RULES` checks it (the field alone accepts
    anything its type admits)."""

    keys: str

    def accepts(self, value: Any) -> bool:
        return True

    @property
    def expected(self) -> str:
        return f"checked with {self.keys} (atss_tf.config.validation.RULES)"


# Checks several settings share.
SWITCH = Free("true or false")
COMPAT_SWITCH = Free("true or false; null: follow official_compat")
PATH = Free("a file, folder or glob, local or remote; null: none")
