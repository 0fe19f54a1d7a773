"""The ``hemp-jax`` command line.

``hemp-jax train --config experiments/configs/default.py --workdir runs/default
[--config.key=value ...]``; ``hemp-jax compress --workdir DIR``, ``hemp-jax decompress
FILE``, ``hemp-jax evaluate FILE --config CONFIG``, ``hemp-jax inspect FILE``. A config
file is a Python file with ``get_config()`` (optionally ``get_config(arg)``, selected as
``file.py:arg``) returning an ``ml_collections.ConfigDict``, or the ``config.json`` a
training run wrote; ``--config.a.b=value`` overrides a field, the value parsed as the type
the field already has.

Errors a user can cause print one line on stderr (``error: ...``) and exit with code 2
(bad input or usage), 1 (a failed run) or 3 (training diverged); ``--debug`` (anywhere on
the command line) shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import ml_collections

from hemp_jax.errors import UsageError
from hemp_jax.fileio import write_atomic
from hemp_jax.train.config import apply_overrides, load_config

__all__ = ["main", "load_config", "apply_overrides"]

EXIT_USAGE, EXIT_FAILED, EXIT_DIVERGED = 2, 1, 3


def _cmd_train(args, rest):
  config = apply_overrides(load_config(args.config), rest)
  from hemp_jax import train

  if args.coordinator_address or args.num_processes is not None or args.process_id is not None:
    # Multi-process data parallelism: join the job before any JAX backend use.
    try:
      train.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    except ValueError as e:
      raise UsageError(str(e)) from None

  summary = train.train_and_evaluate(
    config, args.workdir, allow_config_change=args.allow_config_change
  )
  print(json.dumps(summary, indent=2))
  return 0


def _workdir_config(workdir: str, rest) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise SystemExit(f"{path} not found: is {workdir!r} a `hemp-jax train` work directory?")
  with open(path) as f:
    return apply_overrides(ml_collections.ConfigDict(json.load(f)), rest)


def _cmd_compress(args, rest):
  from hemp_jax.errors import UsageError

  if args.workdir is not None:
    if args.checkpoint is not None:
      raise UsageError("give either a CHECKPOINT or --workdir DIR, not both")
    defaults = build_parser().parse_args(["compress", "x"])
    ptq_options = [
      "--" + k.replace("_", "-")
      for k in (
        "method",
        "levels",
        "step",
        "bits_per_param",
        "max_rel_error",
        "min_size",
        "include",
        "exclude",
        "quantize_vectors",
        "quantize_norm_stats",
        "no_zero_level",
      )
      if getattr(args, k) != getattr(defaults, k)
    ]
    if ptq_options:
      raise UsageError(
        f"{', '.join(ptq_options)}: quantization options apply to a CHECKPOINT; --workdir "
        "uses the codebooks of its training config"
      )
    return _compress_workdir(args, rest)
  if args.checkpoint is None:
    raise UsageError("compress needs a CHECKPOINT (or --workdir DIR of `hemp-jax train`)")
  if rest:
    raise UsageError(f"unrecognized arguments: {' '.join(rest)}")
  return _compress_checkpoint(args)


def _compress_workdir(args, rest):
  config = _workdir_config(args.workdir, rest)
  from hemp_jax import codec, train

  _, state = train.load_final_state(config, args.workdir)
  out = args.output or os.path.join(args.workdir, "model.hemp")
  size = train.write_model_file(out, state, train.eval_codebooks(config, state))
  with open(out, "rb") as f:
    print(codec.format_inspection(codec.inspect(f.read())))
  print(f"wrote {out}: {size} bytes")
  return 0


def _compress_checkpoint(args):
  from hemp_jax import codec
  from hemp_jax.codec import ptq
  from hemp_jax.errors import UsageError

  src = args.checkpoint
  targets = [
    name
    for name, v in (
      ("--levels", args.levels),
      ("--step", args.step),
      ("--bits-per-param", args.bits_per_param),
    )
    if v is not None
  ]
  if len(targets) > 1:
    raise UsageError(
      f"give one of --levels, --step, --bits-per-param (got {' and '.join(targets)})"
    )
  max_rel = args.max_rel_error
  if not targets and max_rel is None:
    max_rel = ptq.DEFAULT_MAX_REL_ERROR
  out = args.output or os.path.splitext(src.rstrip("/"))[0] + ".hemp"
  if os.path.abspath(out) == os.path.abspath(src):
    raise UsageError(f"{out}: the output would overwrite the input; give another -o")
  replaced = _check_output(out, "hemp", args.force)
  try:
    fmt = codec.checkpoint_format(src)
  except FileNotFoundError as e:
    raise UsageError(str(e)) from None
  except ValueError as e:
    raise UsageError(str(e)) from None
  if fmt == "hemp" and (targets or args.max_rel_error is not None or args.method is not None):
    raise UsageError(
      f"{src}: a .hemp input is re-encoded losslessly; drop the quantization options"
    )
  try:
    res = ptq.compress_checkpoint(
      src,
      method=args.method,
      step=args.step,
      num_levels=args.levels,
      bits_per_param=args.bits_per_param,
      max_rel_error=max_rel,
      min_size=args.min_size,
      include=args.include,
      exclude=args.exclude,
      quantize_vectors=args.quantize_vectors,
      quantize_norm_stats=args.quantize_norm_stats,
      zero_level=not args.no_zero_level,
      progress=False if args.no_progress else None,
    )
  except codec.FormatError as e:
    raise UsageError(f"{src}: {e}") from None
  except FileNotFoundError as e:
    raise UsageError(str(e)) from None
  except ValueError as e:
    msg = str(e)
    raise UsageError(msg if msg.startswith((src, "--")) else f"{src}: {msg}") from None
  write_atomic(out, res.blob)
  report = codec.inspect(res.blob)
  if res.results:
    print(ptq.format_table(res.results, report))
  else:
    print(codec.format_inspection(report))
  for line in ptq.nonfinite_notices(res.results):
    print(f"notice: {line}", file=sys.stderr)
  _float_bits_notice(args.bits_per_param, res.results)
  done = "replaced" if replaced else "wrote"
  print(f"{done} {out}: {len(res.blob)} bytes from {fmt} {src} ({res.seconds:.2f} s CPU)")
  return 0


def _check_output(out: str, kind: str, force: bool) -> bool:
  """Whether ``out`` exists (it will be replaced); refuses a file of another kind.

  Raises:
    UsageError: ``out`` is a directory, or a file that is not a ``kind`` file and
      ``force`` is not set.
  """
  from hemp_jax import codec
  from hemp_jax.errors import UsageError

  if os.path.isdir(out):
    raise UsageError(f"{out}: is a directory; give a file name with -o")
  if not os.path.exists(out):
    return False
  try:
    found = codec.checkpoint_format(out)
  except (OSError, ValueError):
    found = "unknown"
  if found != kind and not force:
    raise UsageError(
      f"{out} exists and is not a .{kind} file ({found}); give --force to overwrite it"
    )
  return True


def _float_bits_notice(bits_per_param, results) -> None:
  """Says when ``--bits-per-param`` asks for more than float storage of the leaves costs."""
  import numpy as np

  float_bits = [8 * np.dtype(r.dtype).itemsize for r in results if r.quantized]
  if bits_per_param is not None and float_bits and bits_per_param >= min(float_bits):
    print(
      f"notice: --bits-per-param {bits_per_param:g} is not below the {min(float_bits)} bits "
      "of float storage; the finest grids were used",
      file=sys.stderr,
    )


def _cmd_decompress(args, rest):
  from hemp_jax import codec
  from hemp_jax.errors import UsageError

  out = args.output or os.path.splitext(args.file)[0] + ".npz"
  if not out.endswith((".npz", ".safetensors")):
    raise UsageError(f"{out}: the output must end in .npz or .safetensors")
  replaced = _check_output(out, "npz" if out.endswith(".npz") else "safetensors", args.force)
  try:
    tree = codec.decompress_file(args.file)
  except FileNotFoundError:
    raise UsageError(f"{args.file}: no such file") from None
  except codec.FormatError as e:
    raise UsageError(f"{args.file}: {e}") from None
  try:
    count = codec.write_checkpoint(tree if isinstance(tree, dict) else {"params": tree}, out)
  except ValueError as e:
    raise UsageError(str(e)) from None
  sep = "." if out.endswith(".safetensors") else "/"
  done = "replaced" if replaced else "wrote"
  print(f"{done} {out}: {count} arrays ('{sep}'-joined paths as keys)")
  return 0


def _cmd_evaluate(args, rest):
  if not os.path.isfile(args.file):
    what = "is a directory" if os.path.isdir(args.file) else "not found"
    raise UsageError(f"model file {args.file}: {what} (pass a .hemp file)")
  config = apply_overrides(load_config(args.config), rest)
  from hemp_jax import codec, train

  train.validate_config(config)
  try:
    with open(args.file, "rb") as f:
      codec.inspect(f.read())  # a damaged file fails here, before the model is built
    print(f"decoding {args.file} and evaluating it...", file=sys.stderr)
    accuracy = train.evaluate_model_file(config, args.file)
  except codec.FormatError as e:
    raise UsageError(f"{args.file}: {e}") from None
  except ValueError as e:  # decoded leaves that do not match the config's model
    raise UsageError(
      f"{args.file} does not hold a {config.model} model of this config ({e}); "
      "pass the config it was trained with"
    ) from None
  print(
    json.dumps(
      {
        "file": args.file,
        "file_bytes": os.path.getsize(args.file),
        "test_accuracy_decoded": accuracy,
      },
      indent=2,
    )
  )
  return 0


def _cmd_inspect(args, rest):
  from hemp_jax import codec

  if not os.path.isfile(args.file):
    what = "is a directory" if os.path.isdir(args.file) else "not found"
    raise UsageError(f"{args.file}: {what} (pass a .hemp file)")
  try:
    with open(args.file, "rb") as f:
      report = codec.inspect(f.read())
  except codec.FormatError as e:
    raise UsageError(f"{args.file}: {e}") from None
  print(json.dumps(report.as_dict(), indent=2) if args.json else codec.format_inspection(report))
  return 0


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def _number(kind, low, strict: bool = False):
  """An argparse type: a ``kind`` (int or float) ``>= low`` (``> low`` when strict)."""

  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
        f"{text!r} is not {'an integer' if kind is int else 'a number'}"
      ) from None
    if not (value > low if strict else value >= low) or value != value:
      raise argparse.ArgumentTypeError(f"{text} is not {'>' if strict else '>='} {low}")
    return value

  return parse


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (``error: ... (see hemp-jax CMD --help)``), exit 2."""

  def error(self, message):
    print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


_TRAIN_EPILOG = """\
config overrides:
  Any field of the config can be set after the other options, as --config.KEY=VALUE
  or --config.KEY VALUE, with dotted keys for nested fields; the value is parsed as the
  type the field already has. Examples:
    --config.num_epochs=5  --config.hemp.strength=10  --config.hemp.mode=none
    --config.optimizer.learning_rate=3e-4  --config.quantizer.num_levels=8
  The config is checked before anything is compiled or written (names and ranges).

config variants:
  --config FILE.py:VARIANT[,VARIANT...] passes VARIANT to the file's get_config(). The
  experiment configs (experiments/configs/*.py) accept:
    grad        lambda * H added to the gradient (the default)
    paper       the paper's recipe (SGD lr 0.1, gated unscaled second step)
    none        no regularizer (baseline; same quantizer and coder)
    prune       90% magnitude pruning, with an exact zero level
    prune_sens  90% loss-sensitivity pruning, with an exact zero level
    smoke       a few steps on offline or mock data (CI)
    bf16        activations and matmuls in bfloat16 (params, optimizer, entropy float32)
    offline     (lenet5_mnist, lenet300_mnist) the offline MNIST-5k split
  e.g. --config experiments/configs/lenet5_mnist.py:paper,offline

resuming:
  An existing --workdir is resumed from its newest checkpoint that restores (damaged
  ones are moved to checkpoints.corrupt/). A workdir trained with another config is
  refused, with the differing fields; --allow-config-change resumes anyway and records
  the change in config_history.jsonl.
"""


def _add_train(sub) -> None:
  """The ``train`` command and its options."""
  p = sub.add_parser(
    "train",
    help="train a model with HEMP (config + overrides)",
    usage="%(prog)s --config FILE.py[:VARIANT] --workdir DIR [--allow-config-change] "
    "[--coordinator_address HOST:PORT --num_processes N --process_id I] "
    "[--config.KEY=VALUE ...]",
    epilog=_TRAIN_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--config",
    required=True,
    help="config file: FILE.py, FILE.py:VARIANT[,VARIANT] (see below) or a run's config.json",
  )
  p.add_argument("--workdir", required=True, help="output directory (resumed if it exists)")
  env = os.environ.get
  p.add_argument(
    "--coordinator_address",
    default=env("JAX_COORDINATOR_ADDRESS"),
    help="multi-process: HOST:PORT of process 0 (default $JAX_COORDINATOR_ADDRESS)",
  )
  p.add_argument(
    "--num_processes",
    type=int,
    default=_env_int("JAX_NUM_PROCESSES"),
    help="multi-process: number of processes (default $JAX_NUM_PROCESSES)",
  )
  p.add_argument(
    "--process_id",
    type=int,
    default=_env_int("JAX_PROCESS_ID"),
    help="multi-process: this process's index (default $JAX_PROCESS_ID)",
  )
  p.add_argument(
    "--allow-config-change",
    action="store_true",
    help="resume a workdir trained with another config (recorded in config_history.jsonl)",
  )
  p.set_defaults(func=_cmd_train, takes_overrides=True)


def _add_compress(sub) -> None:
  """The ``compress`` command and its options."""
  p = sub.add_parser(
    "compress",
    help="compress a checkpoint (.npz, .safetensors, orbax dir, msgpack, .hemp) or a work dir",
    description="Quantizes and entropy-codes a checkpoint into a .hemp file, without "
    "retraining (a .hemp input is re-encoded losslessly), or writes the .hemp file of a "
    "`hemp-jax train` work directory (--workdir).",
  )
  p.add_argument("checkpoint", nargs="?", help=".npz, .safetensors, orbax dir, .msgpack, .hemp")
  p.add_argument("--workdir", help="a `hemp-jax train` work directory instead of a checkpoint")
  p.add_argument("-o", "--output", help="output .hemp (default: next to the input)")
  p.add_argument(
    "--method",
    choices=("uniform", "lloyd", "ecsq", "dq"),
    default=None,
    help="uniform grid with a zero level (default), Lloyd-Max (default with --levels), "
    "entropy-constrained (rate-distortion) quantization, or dependent (trellis-coded) "
    "quantization",
  )
  p.add_argument(
    "--levels",
    type=_number(int, 2),
    help="N levels per tensor of least distortion (Lloyd-Max; with --method uniform: "
    "N grid levels, step and clipping range of least distortion)",
  )
  p.add_argument(
    "--step",
    type=_number(float, 0, strict=True),
    help="step of the uniform grid (uniform, ecsq; dq: its grid step)",
  )
  p.add_argument(
    "--bits-per-param",
    type=_number(float, 0, strict=True),
    help="target coded bits per quantized parameter (searched)",
  )
  p.add_argument(
    "--max-rel-error",
    type=_number(float, 0, strict=True),
    help="per-tensor bound on ||w - q(w)|| / ||w|| (default 0.05 when no other target is given)",
  )
  p.add_argument(
    "--min-size",
    type=_number(int, 0),
    default=256,
    help="tensors with fewer values stay float (default 256)",
  )
  p.add_argument(
    "--force", action="store_true", help="overwrite an existing output that is not a .hemp file"
  )
  p.add_argument("--include", help="regex: only matching paths are quantized")
  p.add_argument("--exclude", help="regex: matching paths stay float")
  p.add_argument(
    "--quantize-vectors", action="store_true", help="quantize 1-D tensors too (biases, norm scales)"
  )
  p.add_argument(
    "--quantize-norm-stats",
    action="store_true",
    help="quantize normalization statistics too (running means/variances)",
  )
  p.add_argument(
    "--no-zero-level",
    action="store_true",
    help="grids without a level at 0 (every weight keeps its sign; better at ~1 bit/param)",
  )
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(func=_cmd_compress, takes_overrides=True)


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
    prog="hemp-jax",
    description="HEMP: train, compress and evaluate entropy-regularized networks.",
    epilog="Errors print one line on stderr; exit codes: 0 success, 2 bad input or usage, "
    "1 failed run, 3 training diverged. --debug shows the Python traceback instead.",
  )
  parser.add_argument(
    "--debug", action="store_true", help="show the Python traceback of an error (any position)"
  )
  sub = parser.add_subparsers(dest="command", required=True)
  _add_train(sub)
  _add_compress(sub)
  p = sub.add_parser("decompress", help="decode a .hemp file into an .npz or .safetensors")
  p.add_argument("file")
  p.add_argument("-o", "--output", help="output .npz or .safetensors (default: next to the file)")
  p.add_argument(
    "--force", action="store_true", help="overwrite an existing output of another format"
  )
  p.set_defaults(func=_cmd_decompress)
  p = sub.add_parser("evaluate", help="test accuracy of the model decoded from a .hemp file")
  p.add_argument("file")
  p.add_argument(
    "--config",
    required=True,
    help="the config the model was trained with (FILE.py[:VARIANT] or the run's config.json)",
  )
  p.set_defaults(func=_cmd_evaluate, takes_overrides=True)
  p = sub.add_parser("inspect", help="per-leaf sizes, bits/param and coder of a .hemp file")
  p.add_argument("file")
  p.add_argument("--json", action="store_true", help="machine-readable output")
  p.set_defaults(func=_cmd_inspect)
  p = sub.add_parser(
    "sweep", help="run a resumable rate-accuracy sweep (finished points are not recomputed)"
  )
  p.add_argument("sweep", help="sweep file with get_sweep() (file.py or file.py:arg)")
  p.add_argument("--results", required=True, help="results dir (points/*.json; commit it)")
  p.add_argument("--scratch", required=True, help="scratch dir (float params, .hemp files)")
  p.add_argument("--only", nargs="*", default=None, help="point ids or id prefixes to run")
  p.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
  p.set_defaults(func=_cmd_sweep)
  p = sub.add_parser("report", help="markdown table and PNG plots of a sweep's results")
  p.add_argument("results", help="results dir of `hemp-jax sweep`")
  p.add_argument("--out", default=None, help="output dir (default: the results dir)")
  p.add_argument(
    "--tolerance",
    type=float,
    default=0.01,
    help="accuracy tolerance for 'equal accuracy' (fraction, default 0.01)",
  )
  p.set_defaults(func=_cmd_report)
  return parser


def _cmd_sweep(args, rest):
  from hemp_jax import sweep

  try:
    spec = sweep.load_sweep(args.sweep)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  recs = sweep.run_sweep(
    spec, args.results, args.scratch, progress=not args.no_progress, only=args.only
  )
  print(f"{len(recs)} finished points in {args.results}")
  return 0


def _cmd_report(args, rest):
  from hemp_jax import report

  try:
    path = report.write_report(args.results, args.out, tolerance=args.tolerance)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


def _one_line(text: str) -> str:
  return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _error_line(e: BaseException) -> tuple[int, str]:
  """``(exit code, message)`` of an exception that reached :func:`main`."""
  from hemp_jax import codec
  from hemp_jax.train import TrainingDivergedError

  if isinstance(e, UsageError):
    return EXIT_USAGE, str(e)
  if isinstance(e, TrainingDivergedError):
    return EXIT_DIVERGED, str(e)
  if isinstance(e, codec.FormatError):
    return EXIT_USAGE, f"damaged or foreign .hemp file: {e}"
  if isinstance(e, OSError):
    if e.filename is not None and e.strerror and str(e).startswith("[Errno"):
      return EXIT_USAGE, f"{e.filename}: {e.strerror}"
    if e.strerror and str(e).startswith("[Errno"):
      return EXIT_USAGE, e.strerror
    return EXIT_USAGE, str(e) or type(e).__name__
  if isinstance(e, ValueError):  # the library's checks of user input (configs, files)
    return EXIT_USAGE, str(e)
  if isinstance(e, MemoryError):
    return EXIT_FAILED, "out of memory (lower batch_size or eval_batch_size)"
  return EXIT_FAILED, f"{type(e).__name__}: {e} (run again with --debug for the traceback)"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
  """Warnings as one ``warning: ...`` line on stderr (no source location)."""
  print(f"warning: {_one_line(str(message))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
  """Runs a ``hemp-jax`` command; returns the exit code (errors: one line on stderr)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv
  argv = [a for a in argv if a != "--debug"]
  parser = build_parser()
  try:
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_overrides", False):
      parser.error(f"unrecognized arguments: {' '.join(rest)}")
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else EXIT_USAGE
  try:
    from hemp_jax.codec import QuantizationWarning

    with warnings.catch_warnings():
      warnings.showwarning = _show_warning
      warnings.simplefilter("always", QuantizationWarning)  # one line per leaf
      return args.func(args, rest) or 0
  except KeyboardInterrupt:
    if debug:
      raise
    print("error: interrupted", file=sys.stderr)
    return 130
  except SystemExit as e:
    if debug or not isinstance(e.code, str):
      raise
    print(f"error: {_one_line(e.code)}", file=sys.stderr)
    return EXIT_USAGE
  except Exception as e:
    if debug:
      raise
    code, message = _error_line(e)
    print(f"error: {_one_line(message)}", file=sys.stderr)
    return code


if __name__ == "__main__":
  sys.exit(main())
