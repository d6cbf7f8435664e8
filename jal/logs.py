"""Logging set-up shared by jal's command-line entry points."""

from absl import logging


class QuietLibraries(logging.logging.Filter):
  """Drops INFO records of orbax and jax internals: progress lines stay readable."""

  def filter(self, record):
    noisy = '/orbax/' in record.pathname or '/jax/_src/' in record.pathname
    return record.levelno >= logging.logging.WARNING or not noisy


def quiet_libraries() -> None:
  """Installs `QuietLibraries` on absl's handler and logger (once each).

  The logger too, since jobs run outside `absl.app` (submitit's) may log
  through other handlers.
  """
  for target in (logging.get_absl_handler(), logging.get_absl_logger()):
    if not any(isinstance(f, QuietLibraries) for f in target.filters):
      target.addFilter(QuietLibraries())
