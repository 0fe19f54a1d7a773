"""Checkpoint readers/writers and the `hemp-jax compress CHECKPOINT` / `decompress` round trips."""

import os
import shutil

import numpy as np
import pytest

from hemp_jax import cli, codec
from hemp_jax.codec import checkpoints
from hemp_jax.errors import UsageError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
STEP = 0.01


def _flat(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "params/conv/kernel": rng.laplace(0, 0.05, (3, 3, 8, 16)).astype(np.float32),
    "params/conv/bias": rng.normal(0, 0.1, 16).astype(np.float32),
    "params/dense/kernel": rng.laplace(0, 0.05, (64, 32)).astype(np.float32),
    "params/bn/scale": rng.normal(1, 0.1, 16).astype(np.float32),
    "batch_stats/bn/mean": rng.normal(0, 1, 16).astype(np.float32),
    "batch_stats/bn/var": rng.gamma(2, 1, (600,)).astype(np.float32),
    "batch_stats/num_batches_tracked": np.array(1234, np.int64),
  }


def _run(argv):
  """Runs a subcommand as the CLI does, letting UsageError through."""
  args, rest = cli.build_parser().parse_known_args(argv)
  return args.func(args, rest)


def _expected(flat):
  """Independent PTQ of --step STEP: round to the grid k * STEP (float32 levels)."""
  out = dict(flat)
  for k in ("params/conv/kernel", "params/dense/kernel"):
    w = flat[k].astype(np.float64)
    out[k] = (np.rint(w / STEP) * STEP).astype(np.float32)
  return out


def _write_input(flat, fmt, d):
  if fmt == "npz":
    path = os.path.join(d, "in.npz")
    np.savez(path, **flat)
  elif fmt == "safetensors":
    from safetensors.numpy import save_file

    path = os.path.join(d, "in.safetensors")
    save_file({k.replace("/", "."): v for k, v in flat.items()}, path)
  elif fmt == "msgpack":
    from flax import serialization

    path = os.path.join(d, "in.msgpack")
    with open(path, "wb") as f:
      f.write(serialization.msgpack_serialize(checkpoints.unflatten_names(flat, "/")))
  elif fmt == "orbax":
    import orbax.checkpoint as ocp

    path = os.path.join(d, "ckpt")
    mngr = ocp.CheckpointManager(path)
    mngr.save(7, args=ocp.args.StandardSave(checkpoints.unflatten_names(flat, "/")))
    mngr.wait_until_finished()
    mngr.close()
  return path


@pytest.mark.parametrize("fmt", ["npz", "safetensors", "orbax", "msgpack"])
def test_cli_round_trip(fmt, tmp_path, capsys):
  flat = _flat()
  src = _write_input(flat, fmt, str(tmp_path))
  assert codec.checkpoint_format(src) == fmt
  out = str(tmp_path / "x.hemp")
  assert _run(["compress", src, "-o", out, "--step", str(STEP), "--no-progress"]) == 0
  text = capsys.readouterr().out
  assert "batch_stats/bn/var" in text and "normalization statistics" in text
  for ext in ("npz", "safetensors"):
    back = str(tmp_path / f"back.{ext}")
    assert _run(["decompress", out, "-o", back]) == 0
    got = checkpoints.flatten_tree(checkpoints.read_checkpoint(back))
    assert sorted(got) == sorted(flat)
    want = _expected(flat)
    for k, v in want.items():
      assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
      np.testing.assert_array_equal(got[k], v, err_msg=k)
      if "kernel" not in k:  # float leaves: bitwise
        assert got[k].tobytes() == flat[k].tobytes(), k


def test_round_trip_keeps_original_keys(tmp_path):
  flat = _flat()
  st = {k.replace("/", "."): v for k, v in flat.items()}
  from safetensors.numpy import load_file, save_file

  save_file(st, str(tmp_path / "a.safetensors"))
  res = codec.compress_checkpoint(str(tmp_path / "a.safetensors"), step=STEP, progress=False)
  tree = codec.decompress(res.blob)
  codec.write_checkpoint(tree, str(tmp_path / "b.safetensors"))
  assert sorted(load_file(str(tmp_path / "b.safetensors"))) == sorted(st)
  np.savez(tmp_path / "a.npz", **flat)
  res = codec.compress_checkpoint(str(tmp_path / "a.npz"), step=STEP, progress=False)
  codec.write_checkpoint(codec.decompress(res.blob), str(tmp_path / "b.npz"))
  with np.load(tmp_path / "b.npz") as z:
    assert sorted(z.files) == sorted(flat)


def test_orbax_item_directory_and_step_directory(tmp_path):
  import orbax.checkpoint as ocp

  tree = checkpoints.unflatten_names(_flat(), "/")
  ck = ocp.StandardCheckpointer()
  ck.save(str(tmp_path / "item"), tree)
  ck.wait_until_finished()
  got = checkpoints.flatten_tree(checkpoints.read_checkpoint(str(tmp_path / "item")))
  for k, v in _flat().items():
    assert got[k].tobytes() == v.tobytes()
  src = _write_input(_flat(), "orbax", str(tmp_path))
  # a step directory holding the one item "default" reads as that item
  got = checkpoints.read_checkpoint(os.path.join(src, "7"))
  assert set(checkpoints.flatten_tree(got)) == set(_flat())


@pytest.mark.parametrize("name", ["lenet5_hemp.hemp", "lenet5_noreg.hemp"])
def test_reencode_fixture_bit_identical(name, tmp_path, capsys):
  src = os.path.join(FIXTURES, name)
  out = str(tmp_path / "x.hemp")
  assert _run(["compress", src, "-o", out]) == 0
  a = checkpoints.flatten_tree(codec.decompress_file(src))
  b = checkpoints.flatten_tree(codec.decompress_file(out))
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
    assert a[k].tobytes() == b[k].tobytes(), k
  assert os.path.getsize(out) <= os.path.getsize(src)
  kinds = {l.path: l.kind for l in codec.inspect(open(src, "rb").read()).leaves}
  assert kinds == {l.path: l.kind for l in codec.inspect(open(out, "rb").read()).leaves}


def test_reencode_single_level_and_bare_array():
  x = np.full((40, 10), 0.25, np.float32)
  blob = codec.compress(
    {"w": x, "b": np.arange(3, dtype=np.int32)}, {"w": np.array([0.0, 0.25]), "b": None}
  )
  again = codec.reencode_hemp(blob)
  d = codec.decompress(again)
  assert d["w"].tobytes() == x.tobytes() and d["b"].tolist() == [0, 1, 2]
  y = np.linspace(-1, 1, 400, dtype=np.float32).reshape(20, 20)
  blob = codec.compress(y, np.linspace(-1, 1, 5).astype(np.float32))
  again = codec.reencode_hemp(blob)
  assert codec.decompress(again).tobytes() == codec.decompress(blob).tobytes()


def test_unreadable_inputs_one_line(tmp_path):
  bad = tmp_path / "model.npz"
  bad.write_text("not a zip")
  with pytest.raises(UsageError, match=r"model\.npz: named \.npz but"):
    _run(["compress", str(bad), "-o", str(tmp_path / "o.hemp")])
  other = tmp_path / "model.pt"
  other.write_bytes(b"\x80\x02abc")
  with pytest.raises(UsageError, match=r"model\.pt: unsupported checkpoint format"):
    _run(["compress", str(other)])
  with pytest.raises(UsageError, match=r"missing\.npz: no such file"):
    _run(["compress", str(tmp_path / "missing.npz")])
  (tmp_path / "emptydir").mkdir()
  with pytest.raises(UsageError, match="not an orbax checkpoint"):
    _run(["compress", str(tmp_path / "emptydir")])
  broken = tmp_path / "broken.hemp"
  data = open(os.path.join(FIXTURES, "lenet5_hemp.hemp"), "rb").read()
  broken.write_bytes(data[:-10])
  with pytest.raises(UsageError, match=r"broken\.hemp: .*truncated"):
    _run(["compress", str(broken), "-o", str(tmp_path / "o.hemp")])
  with pytest.raises(UsageError, match=r"broken\.hemp: .*truncated"):
    _run(["decompress", str(broken), "-o", str(tmp_path / "o.npz")])
  with pytest.raises(UsageError, match="must end in .npz or .safetensors"):
    _run(["decompress", os.path.join(FIXTURES, "lenet5_hemp.hemp"), "-o", str(tmp_path / "o.txt")])
  with pytest.raises(UsageError, match="one of --levels, --step, --bits-per-param"):
    _run(["compress", str(bad), "--step", "0.1", "--levels", "4"])


def test_workdir_and_checkpoint_are_exclusive(tmp_path):
  with pytest.raises(UsageError, match="not both"):
    _run(["compress", "a.npz", "--workdir", str(tmp_path)])
  with pytest.raises(UsageError, match="needs a CHECKPOINT"):
    _run(["compress"])
  with pytest.raises(UsageError, match="--bits-per-param, --no-zero-level: quantization options"):
    _run(["compress", "--workdir", str(tmp_path), "--bits-per-param", "2", "--no-zero-level"])


def test_safetensors_bf16_reader(tmp_path):
  import json
  import struct

  import ml_dtypes

  x = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
  raw = x.view(np.uint16).astype("<u2").tobytes()
  header = json.dumps({"a.w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, len(raw)]}})
  path = tmp_path / "m.safetensors"
  path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + raw)
  got = checkpoints.read_checkpoint(str(path))
  assert got["a"]["w"].dtype == ml_dtypes.bfloat16
  assert got["a"]["w"].tobytes() == x.tobytes()


def test_orbax_manager_root_reads_latest_step(tmp_path):
  # a manager root with two steps: the latest is read
  import orbax.checkpoint as ocp

  root = tmp_path / "root"
  mngr = ocp.CheckpointManager(str(root))
  for step, v in ((1, 1.0), (2, 2.0)):
    mngr.save(step, args=ocp.args.StandardSave({"w": np.full((4,), v, np.float32)}))
  mngr.wait_until_finished()
  mngr.close()
  got = checkpoints.read_checkpoint(str(root))
  assert got["w"].tolist() == [2.0] * 4
  shutil.rmtree(root)


def test_unflatten_names_keeps_conflicting_keys_whole():
  flat = {"a.b": 1, "a.b.c": 2, "x.y": 3, ".hidden": 4, "p..q": 5}
  tree = checkpoints.unflatten_names(flat, ".")
  assert tree == {"a": {"b": 1}, "a.b.c": 2, "x": {"y": 3}, ".hidden": 4, "p..q": 5}
  assert checkpoints.flatten_tree({"a": {"b": np.ones(1)}, "x": {"y": np.ones(1)}}, ".").keys() == {
    "a.b",
    "x.y",
  }
