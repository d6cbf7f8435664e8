"""The fields of `config.strategy_options`, each declared once with its default and check.

A strategy declares the options it reads as `Option`s (in its own module;
one shared by several strategies, such as `kmeans.ITERS`, lives in the module
that owns it) and lists them in its `Strategy.options`. The one declaration
gives the default select uses when `options` is None or lacks the field, the
field and default of `config_lib.base_config().strategy_options`, and the
check `config_lib.validate` runs before any compute. A bad value raises a
one-line ValueError naming the strategy and the field.
"""

import dataclasses
import math
import numbers
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Option:
  """One field of `config.strategy_options`.

  Attributes:
    name: the field, e.g. 'kmeans_iters'.
    default: its value when absent (its value in `base_config`, type
      included); None: unset unless given, a `placeholder(kind)` there.
    kind: int (an integral value, not a bool) or float (any real number, read
      as a float).
    ok: `value -> bool` on the int or float (a NaN float always fails).
    requirement: what `kind` and `ok` ask, for the error: 'a positive int'.
    doc: what the field does, in a few words.
  """

  name: str
  default: Any
  kind: type
  ok: Callable[[Any], bool]
  requirement: str
  doc: str

  def read(self, options, strategy: str):
    """`options[name]` (the default if `options` is None or lacks it), checked.

    Args:
      options: ConfigDict, dict or None.
      strategy: the strategy reading it, named in the error.

    Returns:
      The value as `kind`; None when it is unset and the default is None.
    """
    value = self.default if options is None else options.get(self.name, self.default)
    if value is None and self.default is None:  # an unset placeholder
      return None
    if self.kind is int:
      out = int(value) if isinstance(value, numbers.Integral) else math.nan
    else:
      try:
        out = float(value)
      except (TypeError, ValueError):
        out = math.nan
    if isinstance(value, bool) or math.isnan(out) or not self.ok(out):
      raise ValueError(
          f'{strategy}: strategy_options.{self.name} must be {self.requirement}, got {value!r}'
      )
    return out


def positive_int(name: str, default: int | None, doc: str) -> Option:
  """An int option >= 1."""
  return Option(name, default, int, lambda v: v >= 1, 'a positive int', doc)


def number(
    name: str, default: float | None, ok: Callable[[float], bool], requirement: str, doc: str
) -> Option:
  """A real-valued option for which `ok` holds, read as a float."""
  return Option(name, default, float, ok, requirement, doc)


def finite(
    name: str,
    default: float | None,
    doc: str,
    *,
    at_least: float | None = None,
    above: float | None = None,
) -> Option:
  """A finite number option >= `at_least` or > `above`, read as a float."""
  if above is not None:
    return number(
        name, default, lambda v: math.isfinite(v) and v > above, f'a finite number > {above:g}', doc
    )
  return number(
      name,
      default,
      lambda v: math.isfinite(v) and v >= at_least,
      f'a finite number >= {at_least:g}',
      doc,
  )
