"""Test configuration: 4 forced CPU devices, set before any backend use, and a persistent
JAX compilation cache shared by the whole test session (and its subprocesses).

Many tests compile the same small programs again (each ``train_and_evaluate`` builds new
jitted functions); with the cache the second compilation of a program is a file read. The
cache lives in a fresh temporary directory per session, removed at exit
(``HEMP_TEST_JAX_CACHE`` names a directory to reuse instead, ``off`` disables it);
subprocesses find it through the ``JAX_COMPILATION_CACHE_DIR`` environment variable.
Measured on the 2-core machine, test_resume + test_train + test_cli_errors back to back:
127 s without the cache, 72 s with it.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

_CACHE_DIR = os.environ.get("HEMP_TEST_JAX_CACHE")  # "off": no cache (to measure it)
if not _CACHE_DIR:
  _CACHE_DIR = tempfile.mkdtemp(prefix="hemp-jax-test-cache-")
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
if _CACHE_DIR != "off":
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
if _CACHE_DIR != "off":
  jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
