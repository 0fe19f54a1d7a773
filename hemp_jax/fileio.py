"""One way to write an output file: whole or not at all.

Every file the library writes (``.hemp`` files, checkpoints it exports, ``config.json``,
``metrics.jsonl``, sweep records) goes through :func:`atomic_output`: the data is written
to a temporary file with a unique name in the target's folder, flushed and fsync'ed, then
renamed over the target. A reader sees the old file or the new one, never a partial one;
a failure removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Iterator

__all__ = ["atomic_output", "write_atomic"]


@contextlib.contextmanager
def atomic_output(path) -> Iterator[str]:
  """Yields a temporary path to write; on success it replaces ``path`` (fsync'ed).

  For writers that need a file name (``np.savez``, ``safetensors``). The temporary file
  is created empty (mode 0666 less the umask, like ``open(path, "w")``) so that the
  folder is known to be writable before the caller does any work.

  Raises:
    OSError: the folder cannot be written; the message names ``path``, not the temporary.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
  try:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  except OSError as e:
    raise type(e)(e.errno, f"cannot write {path}: {e.strerror}") from None
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def write_atomic(path, data: bytes) -> None:
  """Writes ``data`` to ``path`` through :func:`atomic_output`."""
  with atomic_output(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
