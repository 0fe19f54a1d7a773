"""Errors a user can cause, shared by the library's command-line layer.

``hemp_jax.cli.main`` prints a :class:`UsageError` as one line on stderr
(``error: <message>``) and exits with code 2; no traceback unless ``--debug``.
Library functions keep raising the standard exceptions (``ValueError``,
``FileNotFoundError``, ``codec.FormatError``); the CLI layer turns the ones a user
caused into a ``UsageError`` with a message that says what and how to fix it.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
  """Bad input or usage (a missing file, a bad option value): exit code 2."""
