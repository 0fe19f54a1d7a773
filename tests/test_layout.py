"""Layout rules of the package, read from the source (no import): no module of hemp_jax
uses another module's private names."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "hemp_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _is_module(dotted: str) -> bool:
  rel = pathlib.Path(*dotted.split("."))
  root = PACKAGE.parent
  return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
  """The absolute module of a ``from ... import``."""
  if not node.level:
    return node.module
  base = module.split(".")
  base = base if is_package else base[:-1]
  base = base[: len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def private_uses(path: pathlib.Path) -> list[str]:
  """``file:line what`` for each use of another hemp_jax module's private name."""
  module = _module_name(path)
  tree = ast.parse(path.read_text())
  aliases, found = {}, []  # local name -> the hemp_jax module it is bound to
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "hemp_jax":
          aliases[a.asname or a.name.split(".")[0]] = a.asname and a.name or "hemp_jax"
    elif isinstance(node, ast.ImportFrom):
      source = _absolute(node, module, path.name == "__init__.py")
      if not source or source.split(".")[0] != "hemp_jax":
        continue
      for a in node.names:
        if a.name.startswith("_") and not a.name.startswith("__"):
          found.append(f"{path}:{node.lineno} from {source} import {a.name}")
        if _is_module(f"{source}.{a.name}"):
          aliases[a.asname or a.name] = f"{source}.{a.name}"

  def target(expr) -> str | None:
    """The hemp_jax module an expression names (``alias``, ``alias.sub``), or None."""
    if isinstance(expr, ast.Name):
      return aliases.get(expr.id)
    if isinstance(expr, ast.Attribute):
      base = target(expr.value)
      if base and _is_module(f"{base}.{expr.attr}"):
        return f"{base}.{expr.attr}"
    return None

  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
      if node.attr.startswith("__"):
        continue
      owner = target(node.value)
      if owner and owner != module:
        found.append(f"{path}:{node.lineno} {owner}.{node.attr}")
  return found


def _all_uses() -> list[str]:
  out = []
  for path in sorted(PACKAGE.rglob("*.py")):
    out += private_uses(path)
  return out


def test_the_checker_sees_private_uses(tmp_path):
  pkg = tmp_path / "hemp_jax"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("_x = 1\n")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "sub" / "b.py").write_text(
    "from hemp_jax.a import _x\n"
    "from .. import a\n"
    "from hemp_jax import a as aa\n"
    "import hemp_jax.a\n"
    "from . import c\n"
    "y = a._x + aa._x + hemp_jax.a._x + c._z + a.__name__.upper()\n"
  )
  (pkg / "sub" / "c.py").write_text("_z = 2\n")
  global PACKAGE
  old, PACKAGE = PACKAGE, pkg
  try:
    uses = private_uses(pkg / "sub" / "b.py")
  finally:
    PACKAGE = old
  text = "\n".join(uses)
  assert "from hemp_jax.a import _x" in text
  for what in ("hemp_jax.a._x", "hemp_jax.sub.c._z"):
    assert what in text
  assert len(uses) == 5, uses


def test_no_module_uses_another_modules_private_names():
  assert _all_uses() == []
