"""Every bad command line a user can type ends in one line on stderr and an exit code.

Exit codes: 2 for bad input or usage, 1 for a failed run, 3 for divergence (test_train).
The config is checked before anything is compiled or written, so each case here is fast
and leaves no workdir behind. Most run ``cli.main`` in-process; a few run the real
``python -m hemp_jax.cli`` to show that no traceback reaches the terminal.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hemp_jax as hj
from hemp_jax import cli
from hemp_jax.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
DEFAULT = os.path.join(CONFIGS, "default.py")
LENET5 = os.path.join(CONFIGS, "lenet5_mnist.py")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "lenet5_hemp.hemp")


def _train(*overrides):
  return ["train", "--config", DEFAULT, "--workdir", "{tmp}/run", *overrides]


# (id, argv, exit code, a piece of the one line). {tmp} is the test's tmp_path.
CASES = [
  ("inspect-missing", ["inspect", "{tmp}/missing.hemp"], 2, "missing.hemp: not found"),
  ("inspect-directory", ["inspect", "{tmp}"], 2, "is a directory"),
  ("inspect-damaged", ["inspect", "{tmp}/truncated.hemp"], 2, "truncated.hemp: "),
  ("decompress-missing", ["decompress", "{tmp}/missing.hemp"], 2, "missing.hemp"),
  ("decompress-directory", ["decompress", "{tmp}"], 2, ""),
  ("decompress-unwritable-o", ["decompress", FIXTURE, "-o", "/proc/hemp.npz"], 2, "hemp.npz"),
  ("evaluate-missing", ["evaluate", "{tmp}/missing.hemp", "--config", DEFAULT], 2, "not found"),
  ("evaluate-missing-config", ["evaluate", FIXTURE, "--config", "{tmp}/nope.py"], 2, "nope.py"),
  ("evaluate-config-dir", ["evaluate", FIXTURE, "--config", "{tmp}"], 2, "is a directory"),
  ("evaluate-garbage", ["evaluate", "{tmp}/garbage.hemp", "--config", DEFAULT], 2, "garbage"),
  (
    "evaluate-other-model",
    ["evaluate", FIXTURE, "--config", "{tmp}/lenet300/config.json"],
    2,
    "does not hold a lenet_300_100 model",
  ),
  ("compress-missing-workdir", ["compress", "--workdir", "{tmp}/nope"], 2, "nope"),
  (
    "config-syntax-error",
    ["train", "--config", "{tmp}/syntax.py", "--workdir", "{tmp}/run"],
    2,
    "syntax.py line 1: syntax error",
  ),
  (
    "config-missing",
    ["train", "--config", "{tmp}/nope.py", "--workdir", "{tmp}/run"],
    2,
    "config file not found",
  ),
  (
    "config-not-python",
    ["train", "--config", "{tmp}/garbage.hemp", "--workdir", "{tmp}/run"],
    2,
    "expected a .py file",
  ),
  (
    "variant-bogus",
    ["train", "--config", LENET5 + ":bogus", "--workdir", "{tmp}/run"],
    2,
    "known: bf16, grad, none, offline, paper, prune, prune_sens, smoke",
  ),
  ("mode-bogus", _train("--config.hemp.mode=bogus"), 2, "known values: none, grad, paper"),
  ("model-nope", _train("--config.model=nope"), 2, "config.model = 'nope': unknown; known"),
  (
    "dataset-nope",
    _train("--config.dataset=nope"),
    2,
    "mnist5k, digits, mnist, fashion_mnist, cifar10, imagenet2012, npz:PATH",
  ),
  ("batch-size-0", _train("--config.batch_size=0"), 2, "config.batch_size = 0: must be"),
  ("epochs-0", _train("--config.num_epochs=0"), 2, "config.num_epochs = 0: must be"),
  ("levels-1", _train("--config.quantizer.num_levels=1"), 2, "num_levels = 1: must be"),
  ("order-0", _train("--config.hemp.order=0"), 2, "config.hemp.order = 0: must be"),
  ("degenerate-bogus", _train("--config.quantizer.degenerate=x"), 2, "defer, float, keep"),
  ("lambda-units-bogus", _train("--config.hemp.lambda_units=x"), 2, "per_param, authors"),
  ("dtype-bogus", _train("--config.dtype=float8"), 2, "float32, bfloat16"),
  ("workers-negative", _train("--config.data.worker_count=-1"), 2, "worker_count = -1"),
  ("lr-negative", _train("--config.optimizer.learning_rate=-1"), 2, "learning_rate = -1.0"),
  ("strength-negative", _train("--config.hemp.strength=-5"), 2, "strength = -5.0: must be"),
  (
    "sparsity-1.5",
    ["train", "--config", LENET5 + ":offline,prune", "--workdir", "{tmp}/run"]
    + ["--config.pruning.sparsity=1.5"],
    2,
    "config.pruning.sparsity = 1.5: must be",
  ),
  ("tuples-bogus", _train("--config.hemp.tuples=bogus"), 2, "known values: disjoint, sliding"),
  ("optimizer-bogus", _train("--config.optimizer.name=rmsprop"), 2, "known values: sgd, adam"),
  ("eval-batch-0", _train("--config.eval_batch_size=0"), 2, "eval_batch_size = 0"),
  ("unknown-field", _train("--config.hemp.nope=1"), 2, "unknown config field 'hemp.nope'"),
  ("bad-value", _train("--config.batch_size=abc"), 2, "bad value for --config.batch_size"),
  ("missing-value", _train("--config.batch_size"), 2, "missing value for --config.batch_size"),
  ("stray-argument", _train("--epochs", "3"), 2, "unknown argument '--epochs'"),
  (
    "workdir-in-proc",
    ["train", "--config", DEFAULT, "--workdir", "/proc/hemp-run"],
    2,
    "cannot create or write the workdir /proc/hemp-run",
  ),
  (
    "workdir-is-file",
    ["train", "--config", DEFAULT, "--workdir", "{tmp}/garbage.hemp"],
    2,
    "is a file, not a directory",
  ),
  (
    "workdir-under-file",
    ["train", "--config", DEFAULT, "--workdir", "{tmp}/garbage.hemp/run"],
    2,
    "garbage.hemp is a file",
  ),
  (
    "tfds-not-prepared",
    ["train", "--config", LENET5, "--workdir", "{tmp}/run", "--config.data_dir={tmp}/tfds"],
    2,
    "TFDS dataset 'mnist' is not prepared",
  ),
  (
    "resume-changed-config",
    ["train", "--config", DEFAULT, "--workdir", "{tmp}/done", "--config.hemp.strength=9"],
    2,
    "1 field(s) differ: hemp.strength: 7.0 -> 9.0",
  ),
  (
    "dataset-files-missing",
    _train("--config.dataset=fashion_mnist", "--config.data_dir={tmp}/nope"),
    2,
    "apt-get install dataset-fashion-mnist",
  ),
  ("dataset-npz-missing", _train("--config.dataset=npz:{tmp}/nope.npz"), 2, "nope.npz: no such"),
  ("train-no-workdir", ["train", "--config", DEFAULT], 2, "required: --workdir"),
  ("unknown-command", ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
  ("no-command", [], 2, "required: command"),
  ("inspect-extra-argument", ["inspect", FIXTURE, "--config.x=1"], 2, "unrecognized arguments"),
]


@pytest.fixture
def files(tmp_path, monkeypatch):
  """The files the bad command lines point at (nothing else exists in tmp_path)."""
  from hemp_jax.data import files as data_files

  monkeypatch.setattr(data_files, "_SYSTEM_DIRS", (str(tmp_path / "no-system-data"),))
  monkeypatch.delenv("HEMP_DATA_DIR", raising=False)
  (tmp_path / "syntax.py").write_text("def get_config(:\n  pass\n")
  (tmp_path / "garbage.hemp").write_bytes(b"garbage")
  with open(FIXTURE, "rb") as f:
    (tmp_path / "truncated.hemp").write_bytes(f.read()[:3000])
  cfg = cli.load_config(DEFAULT)
  cfg.model, cfg.dataset = "lenet_300_100", "digits"
  cfg.model_kwargs = {"in_features": 64}
  (tmp_path / "lenet300").mkdir()
  (tmp_path / "lenet300" / "config.json").write_text(cfg.to_json_best_effort())
  (tmp_path / "done").mkdir()  # a workdir holding a run of default.py
  (tmp_path / "done" / "config.json").write_text(cli.load_config(DEFAULT).to_json_best_effort())
  (tmp_path / "done" / "metrics.jsonl").write_text("")
  return tmp_path


@pytest.mark.parametrize("argv,code,piece", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_command_line_gives_one_line(files, capsys, argv, code, piece):
  tmp = str(files)
  before = sorted(os.listdir(tmp))
  rc = cli.main([a.replace("{tmp}", tmp) for a in argv])
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error: ")]
  assert rc == code
  assert len(errors) == 1, err
  # Besides the error, only the short progress messages ("decoding FILE...").
  assert all(line.endswith("...") for line in lines if line not in errors), err
  assert piece.replace("{tmp}", tmp) in errors[0]
  assert "Traceback" not in err
  assert sorted(os.listdir(tmp)) == before  # no workdir, no config.json left behind
  assert sorted(os.listdir(os.path.join(tmp, "done"))) == ["config.json", "metrics.jsonl"]


@pytest.mark.parametrize(
  "argv",
  [
    ["inspect", "{tmp}/missing.hemp"],
    ["train", "--config", "{tmp}/syntax.py", "--workdir", "{tmp}/run"],
    _train("--config.model=nope"),
  ],
  ids=["inspect-missing", "config-syntax-error", "model-nope"],
)
def test_no_traceback_reaches_the_terminal(files, argv):
  """The real entry point, in a subprocess: stderr is exactly one line."""
  tmp = str(files)
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  p = subprocess.run(
    [sys.executable, "-m", "hemp_jax.cli", *[a.replace("{tmp}", tmp) for a in argv]],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
  )
  assert p.returncode == 2
  assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: "), p.stderr
  assert not os.path.exists(os.path.join(tmp, "run"))


def test_debug_shows_the_exception(files):
  missing = str(files / "missing.hemp")
  with pytest.raises(UsageError, match="not found"):
    cli.main(["--debug", "inspect", missing])
  with pytest.raises(UsageError, match="not found"):
    cli.main(["inspect", missing, "--debug"])  # anywhere on the line


def test_train_help_documents_overrides_and_variants(capsys):
  assert cli.main(["train", "--help"]) == 0
  out = capsys.readouterr().out
  for piece in [
    "--config.KEY=VALUE",
    "--config.hemp.strength=10",
    "FILE.py:VARIANT",
    "paper",
    "prune_sens",
    "smoke",
    "offline",
    "--allow-config-change",
    "config_history.jsonl",
  ]:
    assert piece in out, piece


def test_evaluate_accepts_a_workdir_config_json(files, capsys):
  """A run's config.json is a config: evaluate the fixture with its own settings."""
  cfg = cli.load_config(DEFAULT)  # the fixture: LeNet-5 on MNIST-5k
  path = files / "config.json"
  path.write_text(cfg.to_json_best_effort())
  assert cli.main(["evaluate", FIXTURE, "--config", str(path)]) == 0
  out = json.loads(capsys.readouterr().out)
  with open(FIXTURE.replace(".hemp", ".summary.json")) as f:
    expected = json.load(f)
  assert out["file_bytes"] == expected["file_bytes"] == os.path.getsize(FIXTURE)
  assert out["test_accuracy_decoded"] == expected["test_accuracy_decoded"]


# ------------------------------------------------------------ compress: odd input


@pytest.fixture
def weights(tmp_path):
  """An .npz with a large float tensor holding one NaN, a clean one, and a small one."""
  rng = np.random.default_rng(0)
  clean = rng.normal(size=(64, 32)).astype(np.float32)
  bad = clean.copy()
  bad[3, 4] = np.nan
  bad[5, 6] = np.inf
  np.savez(tmp_path / "w.npz", clean=clean, bad=bad, small=np.ones(10, np.float32))
  return tmp_path


def _run(argv, capsys):
  rc = cli.main(argv)
  out, err = capsys.readouterr()
  return rc, out, [line for line in err.splitlines() if line.strip()]


def test_compress_names_a_leaf_kept_in_float_for_nan(weights, capsys):
  rc, out, err = _run(["compress", str(weights / "w.npz"), "--no-progress"], capsys)
  assert rc == 0
  assert err == ["notice: bad kept in float: 2 of 2048 values are NaN or Inf"]
  assert "wrote " in out
  decoded = np.load(weights / "w.npz")["bad"]
  assert np.array_equal(
    hj.codec.decompress_file(weights / "w.hemp")["bad"], decoded, equal_nan=True
  )


@pytest.mark.parametrize(
  "option,piece",
  [
    (["--include", "("], "--include '(' is not a valid regular expression: missing )"),
    (["--exclude", "[a-"], "--exclude '[a-' is not a valid regular expression"),
    (["--levels", "1"], "argument --levels: 1 is not >= 2"),
    (["--levels", "x"], "argument --levels: 'x' is not an integer"),
    (["--step", "0"], "argument --step: 0 is not > 0"),
    (["--bits-per-param", "-1"], "argument --bits-per-param: -1 is not > 0"),
    (["--max-rel-error", "nan"], "argument --max-rel-error: nan is not > 0"),
    (["--min-size", "-5"], "argument --min-size: -5 is not >= 0"),
  ],
)
def test_compress_bad_option_values_are_one_usage_line(weights, capsys, option, piece):
  argv = ["compress", str(weights / "w.npz"), "--no-progress", *option]
  rc, _, err = _run(argv, capsys)
  assert rc == 2
  assert len(err) == 1 and err[0].startswith("error: ") and not err[0].startswith("error: error")
  assert piece in err[0], err
  assert not (weights / "w.hemp").exists()


def test_compress_refuses_to_overwrite_a_file_of_another_kind(weights, capsys):
  other = weights / "other.npz"
  other.write_bytes((weights / "w.npz").read_bytes())
  before = other.read_bytes()
  argv = ["compress", str(weights / "w.npz"), "-o", str(other), "--no-progress"]
  rc, _, err = _run(argv, capsys)
  assert rc == 2
  assert err == [
    f"error: {other} exists and is not a .hemp file (npz); give --force to overwrite it"
  ]
  assert other.read_bytes() == before
  assert [p.name for p in weights.iterdir() if p.name.startswith(".")] == []  # no temp left
  rc, out, _ = _run([*argv, "--force"], capsys)
  assert rc == 0 and f"replaced {other}" in out
  assert other.read_bytes()[:4] == b"HEMP"
  # an existing .hemp output is replaced, and the line says so
  for done in ("wrote", "replaced"):
    rc, out, _ = _run(["compress", str(weights / "w.npz"), "--no-progress"], capsys)
    assert rc == 0 and f"{done} {weights / 'w.hemp'}" in out


def test_decompress_refuses_to_overwrite_a_file_of_another_kind(tmp_path, capsys):
  out = tmp_path / "w.npz"
  out.write_bytes(open(FIXTURE, "rb").read())  # a .hemp file named .npz
  rc, _, err = _run(["decompress", FIXTURE, "-o", str(out)], capsys)
  assert rc == 2 and err == [
    f"error: {out} exists and is not a .npz file (hemp); give --force to overwrite it"
  ]
  rc, stdout, _ = _run(["decompress", FIXTURE, "-o", str(out), "--force"], capsys)
  assert rc == 0 and f"replaced {out}" in stdout
  assert np.load(out)["params/conv1/kernel"].shape == (5, 5, 1, 20)


def test_compress_says_when_bits_per_param_exceed_float_storage(weights, capsys):
  argv = ["compress", str(weights / "w.npz"), "--no-progress", "--bits-per-param", "40"]
  rc, out, err = _run(argv, capsys)
  assert rc == 0
  assert err[-1] == (
    "notice: --bits-per-param 40 is not below the 32 bits of float storage; "
    "the finest grids were used"
  )
