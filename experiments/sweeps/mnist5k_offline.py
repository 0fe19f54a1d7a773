"""The offline rate–accuracy sweep on MNIST-5k (LeNet-5 and LeNet-300-100), CPU-sized.

    hemp-jax sweep experiments/sweeps/mnist5k_offline.py \
        --results experiments/results/mnist5k_offline --scratch /tmp/hemp_sweep
    hemp-jax report experiments/results/mnist5k_offline

Per model: one float model trained from scratch (the reference accuracy); every other
point starts from it. Post-training quantization (uniform / Lloyd-Max, N = 2..16, no
training); fine-tuning without regularizer (same quantizer, same coder); HEMP fine-tuning
over entropy order 1-4 x strength, Lloyd-Max, number of levels, sliding tuples, the paper's
recipe; magnitude and loss-sensitivity pruning (exact zero level) alone and with HEMP.
``get_sweep("tiny")`` is the 3-point sweep of the tests (digits, a few steps).
"""

import os

from hemp_jax.train.config import load_python_file

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, arg):
  path = os.path.join(_ROOT, "configs", name + ".py")
  return load_python_file(path, "hemp_cfg_" + name).get_config(arg)


def _points(
  Point, model_file, tag, *, pre_epochs, ft_epochs, strengths, smoke=False, full=True, extra_n8=()
):
  pts = []
  base = _config(model_file, "offline,smoke" if smoke else "offline")
  base.progress = False
  base.hemp.refresh_every = 4
  base.qat_epochs = 0  # pinned (default.py's default may change); see qat() below

  def cfg(mode="none", epochs=ft_epochs, **kw):
    c = base.copy_and_resolve_references()
    c.num_epochs = epochs
    c.hemp.mode = mode
    for k, v in kw.items():
      node = c
      parts = k.split("__")
      for p in parts[:-1]:
        node = node[p]
      node[parts[-1]] = v
    return c

  pre = f"{tag}-float"
  c = cfg("none", pre_epochs)
  pts.append(Point(pre, "pretrain", c, "float", None, {}))
  # Post-training quantization of the float model (no training).
  for method in ("uniform", "lloyd_max"):
    for n in (4, 8) if smoke else (2, 3, 4, 8, 16):
      pts.append(
        Point(
          f"{tag}-ptq-{method}-N{n}",
          "ptq",
          cfg("none", quantizer__method=method, quantizer__num_levels=n),
          f"ptq-{method}",
          pre,
          {"quantizer": method, "levels": n},
        )
      )
      if smoke:
        break
    if smoke:
      break
  if smoke:
    pts.append(
      Point(
        f"{tag}-hemp-o2-s{strengths[0]:g}",
        "train",
        cfg(
          "grad",
          hemp__order=2,
          hemp__strength=float(strengths[0]),
          pruning__method="magnitude",
          pruning__sparsity=0.5,
          quantizer__zero_level=True,
        ),
        "hemp+prune-magnitude",
        pre,
        {"order": 2, "strength": strengths[0]},
      )
    )
    return pts
  lo, mid, hi = strengths

  def hemp(order, s, **kw):
    axes = {
      "order": order,
      "strength": s,
      "levels": kw.get("quantizer__num_levels", 4),
      "quantizer": kw.get("quantizer__method", "uniform"),
      "tuples": kw.get("hemp__tuples", "disjoint"),
    }
    suffix = "".join(
      f"-N{v}" if k == "quantizer__num_levels" else f"-{v}"
      for k, v in kw.items()
      if k != "quantizer__method"
    )
    qm = kw.get("quantizer__method", "uniform")
    name = f"{tag}-hemp-{'lloyd-' if qm == 'lloyd_max' else ''}o{order}-s{s:g}" + suffix
    return Point(
      name,
      "train",
      cfg("grad", hemp__order=order, hemp__strength=float(s), **kw),
      f"hemp-{qm}",
      pre,
      axes,
    )

  def prune(pm, sp, s=None):
    if s is None:
      return Point(
        f"{tag}-prune-{pm}-{sp:g}",
        "train",
        cfg("none", pruning__method=pm, pruning__sparsity=sp, quantizer__zero_level=True),
        f"prune-{pm}",
        pre,
        {"pruning": pm, "sparsity": sp, "levels": 4},
      )
    return Point(
      f"{tag}-hemp-prune-{pm}-{sp:g}-s{s:g}",
      "train",
      cfg(
        "grad",
        hemp__strength=float(s),
        pruning__method=pm,
        pruning__sparsity=sp,
        quantizer__zero_level=True,
      ),
      f"hemp+prune-{pm}",
      pre,
      {"order": 3, "strength": s, "pruning": pm, "sparsity": sp, "levels": 4},
    )

  # In order of importance (the sweep runs them in this order).
  pts.append(
    Point(
      f"{tag}-noreg-uniform-N4",
      "train",
      cfg("none"),
      "noreg-uniform",
      pre,
      {"quantizer": "uniform", "levels": 4},
    )
  )
  pts.append(hemp(3, mid))
  pts.append(prune("magnitude", 0.9))
  pts.append(prune("magnitude", 0.9, mid))
  pts.append(prune("sensitivity", 0.9))
  pts.append(prune("sensitivity", 0.9, mid))
  for order in (1, 2, 4):
    pts.append(hemp(order, mid))
  for order in (1, 2, 3, 4):
    pts.append(hemp(order, hi))
  pts.append(
    Point(
      f"{tag}-noreg-lloyd_max-N4",
      "train",
      cfg("none", quantizer__method="lloyd_max"),
      "noreg-lloyd_max",
      pre,
      {"quantizer": "lloyd_max", "levels": 4},
    )
  )
  pts.append(hemp(3, mid, quantizer__method="lloyd_max"))
  pts.append(hemp(3, hi, quantizer__method="lloyd_max"))
  pts.append(hemp(3, lo))
  pts.append(hemp(3, mid, quantizer__num_levels=8))
  pts.append(hemp(3, mid, hemp__tuples="sliding"))
  paper = cfg(
    "paper",
    optimizer__name="sgd",
    optimizer__learning_rate=0.01,
    optimizer__weight_decay=1e-4,
    optimizer__schedule="constant",
    hemp__strength=1.0,
    hemp__lambda_q=0.1,
    hemp__refresh_every=10,
  )
  pts.append(
    Point(
      f"{tag}-paper-o3",
      "train",
      paper,
      "hemp-paper",
      pre,
      {"order": 3, "strength": 1.0, "recipe": "paper"},
    )
  )

  # More levels, and pruning that spares small layers (min_size 1000: LeNet-5's conv1 is
  # 500 weights) with an early ramp (done at epoch 2) to leave time to recover.
  def prune2(pm, sp, n, s=None):
    kw = dict(
      pruning__method=pm,
      pruning__sparsity=sp,
      pruning__min_size=1000,
      pruning__end_epoch=min(2.0, 0.5 * ft_epochs),
      quantizer__zero_level=True,
      quantizer__num_levels=n,
    )
    axes = {"pruning": pm, "sparsity": sp, "levels": n}
    if s is None:
      return Point(
        f"{tag}-prune2-{pm}-{sp:g}-N{n}", "train", cfg("none", **kw), f"prune-{pm}", pre, axes
      )
    return Point(
      f"{tag}-hemp-prune2-{pm}-{sp:g}-s{s:g}-N{n}",
      "train",
      cfg("grad", hemp__strength=float(s), **kw),
      f"hemp+prune-{pm}",
      pre,
      dict(axes, order=3, strength=s),
    )

  # Quantization-aware last epoch (qat_epochs=1: the task loss on the quantized network,
  # straight-through): closes the gap between the continuous and the decoded accuracy.
  def qat(p):
    p.config.qat_epochs = 1
    p.id += "-qat1"
    p.axes = dict(p.axes, qat_epochs=1)
    return p

  pts.append(qat(hemp(3, mid, quantizer__num_levels=8)))
  pts.append(qat(hemp(3, hi, quantizer__num_levels=8)))
  pts.append(qat(hemp(3, hi)))
  pts.append(qat(prune2("magnitude", 0.9, 8, mid)))
  # N = 8 levels (+ guards): HEMP's sweet spot on LeNet-5 in this short fine-tuning.
  pts.append(hemp(3, lo, quantizer__num_levels=8))
  pts.append(hemp(3, 5.0, quantizer__num_levels=8))
  for order in (1, 2, 4):
    pts.append(hemp(order, mid, quantizer__num_levels=8))
  for s_ in extra_n8:  # finer strengths around the knee (LeNet-5)
    pts.append(hemp(3, s_, quantizer__num_levels=8))
    pts.append(qat(hemp(3, s_, quantizer__num_levels=8)))
  pts.append(prune2("magnitude", 0.9, 8))
  pts.append(prune2("magnitude", 0.9, 8, mid))
  pts.append(hemp(3, hi, quantizer__num_levels=8))
  pts.append(prune2("magnitude", 0.95, 8, mid))
  pts.append(prune2("sensitivity", 0.9, 8, mid))
  pts.append(hemp(3, mid, quantizer__num_levels=16))
  pts.append(prune2("magnitude", 0.95, 16, mid))
  pts.append(prune2("sensitivity", 0.9, 8))

  # Longer fine-tuning (3x the budget) for the pruned points, with the same ramp (done at
  # epoch 2): does pruning reach the 1-pp band once the network has time to recover? The
  # unpruned HEMP point with the same budget is the comparison.
  def longer(p, factor=3):
    p.config.num_epochs = factor * ft_epochs
    p.id += f"-e{factor * ft_epochs}"
    p.axes = dict(p.axes, epochs=factor * ft_epochs)
    return p

  if extra_n8:  # LeNet-5 only (the headline model)
    pts.append(longer(prune2("sensitivity", 0.9, 8)))
    pts.append(longer(qat(prune2("sensitivity", 0.9, 8, mid))))
    pts.append(longer(qat(prune2("sensitivity", 0.8, 8, mid))))
    pts.append(longer(qat(hemp(3, mid, quantizer__num_levels=8))))
  if full:
    for order in (1, 2, 4):
      pts.append(hemp(order, lo))
    pts.append(prune("magnitude", 0.95))
    pts.append(prune("magnitude", 0.9, lo))
    pts.append(hemp(3, lo, quantizer__method="lloyd_max"))
    pts.append(hemp(3, mid, quantizer__num_levels=2))
  return pts


def get_sweep(arg=None):
  from hemp_jax.sweep import Point, Sweep

  if arg == "tiny":
    pts = _points(
      Point,
      "lenet300_mnist",
      "digits-l300",
      pre_epochs=1,
      ft_epochs=1,
      strengths=(3.0,),
      smoke=True,
    )
    for p in pts:
      p.config.dataset = "digits"
      p.config.model_kwargs = {"in_features": 64}
      p.config.max_train_examples = None
      p.config.max_steps_per_epoch = 4
      p.config.batch_size = 32
      p.config.eval_batch_size = 200
    return Sweep("tiny", pts, "test sweep: digits, LeNet-300-100, a few steps")
  pts = _points(
    Point,
    "lenet5_mnist",
    "lenet5",
    pre_epochs=10,
    ft_epochs=4,
    strengths=(3.0, 10.0, 30.0),
    full=False,
    extra_n8=(7.0,),
  )
  pts += _points(
    Point,
    "lenet300_mnist",
    "lenet300",
    pre_epochs=15,
    ft_epochs=8,
    strengths=(3.0, 10.0, 30.0),
    full=False,
  )
  return Sweep("mnist5k_offline", pts, __doc__.splitlines()[0])
