"""Reading and checking fields of `config.strategy_options`.

Every strategy reads its own fields (prefixed by its name) with a default,
so `options` may be None or lack the field. A bad value raises a one-line
ValueError naming the strategy and the field.
"""

import math
import numbers


def _get(options, name, default):
  return default if options is None else options.get(name, default)


def positive_int(options, strategy: str, name: str, default: int) -> int:
  """`options[name]` (default `default`), checked to be an int >= 1."""
  value = _get(options, name, default)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f'{strategy}: strategy_options.{name} must be a positive int, got {value!r}')
  return int(value)


def number(options, strategy: str, name: str, default, ok, requirement: str) -> float:
  """`options[name]` (default `default`) as a float for which `ok` holds.

  Args:
    options: ConfigDict or None.
    strategy: the strategy's name, for the error.
    name: the field.
    default: its value when absent.
    ok: `float -> bool`, the check (NaN and non-numbers always fail).
    requirement: what the check means, e.g. 'a finite number >= 0'.

  Returns:
    The value as a float.
  """
  value = _get(options, name, default)
  try:
    out = float(value)
  except (TypeError, ValueError):
    out = math.nan
  if isinstance(value, bool) or math.isnan(out) or not ok(out):
    raise ValueError(f'{strategy}: strategy_options.{name} must be {requirement}, got {value!r}')
  return out
