"""The import order of docs/architecture.md: main -> train -> evaluate -> api -> state -> ..."""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "segrpn_jax"
# Each module and the package modules it must never import (directly or inside a function).
FORBIDDEN = {
  "api": {"main", "train", "evaluate", "predict", "analysis"},
  "state": {"main", "train", "evaluate", "api", "predict", "analysis"},
  "evaluate": {"main", "train"},
  "train": {"main"},
  "predict": {"main", "train", "evaluate"},
  "checkpointing": {"main", "train", "evaluate", "api", "state"},
  # The speed scripts run where only JAX is installed (a GPU machine without TensorFlow).
  "benchmark": {"main", "train", "evaluate", "input_pipeline", "datasets"},
}


def _imported_modules(path: pathlib.Path) -> set[str]:
  """Names of segrpn_jax's top-level modules that a file imports anywhere in its body."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module == "segrpn_jax":
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("segrpn_jax."):
      names.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("segrpn_jax."))
  return names


def test_no_module_imports_one_above_it():
  for module, forbidden in FORBIDDEN.items():
    imported = _imported_modules(PACKAGE / f"{module}.py")
    assert not imported & forbidden, f"segrpn_jax.{module} imports {imported & forbidden}"


def test_ops_never_import_models_and_models_never_import_datasets():
  for path in (PACKAGE / "ops").glob("*.py"):
    assert "models" not in _imported_modules(path), path.name
  for path in (PACKAGE / "models").glob("*.py"):
    assert "datasets" not in _imported_modules(path), path.name


def _loaded_by_import(module: str, candidates: tuple[str, ...]) -> list[str]:
  """Which of `candidates` a fresh interpreter has loaded after `import module`."""
  code = f"import sys, {module}; print(sorted(m for m in {candidates!r} if m in sys.modules))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return ast.literal_eval(out.stdout.strip())


def test_importing_api_loads_neither_train_nor_evaluate():
  assert _loaded_by_import("segrpn_jax.api", ("segrpn_jax.train", "segrpn_jax.evaluate")) == []


def test_importing_benchmark_loads_no_tensorflow_or_clu():
  # The speed scripts run where only JAX is installed (a GPU machine without TensorFlow).
  loaded = _loaded_by_import("segrpn_jax.benchmark", ("tensorflow", "tensorflow_datasets", "clu"))
  assert loaded == []


def test_every_model_convolution_group_norm_and_max_pool_is_ours():
  # flax's nn.Conv used directly would miss ops.conv's CPU gradients, nn.GroupNorm the faster
  # statistics of layers.GroupNorm, nn.max_pool the fused gradient of ops.pool.
  for path in (PACKAGE / "models").glob("*.py"):
    if path.name == "layers.py":
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      func = node.func if isinstance(node, ast.Call) else None
      if isinstance(func, ast.Attribute) and func.attr in ("Conv", "ConvTranspose", "GroupNorm"):
        raise AssertionError(f"{path.name}:{node.lineno} calls nn.{func.attr}; use layers'")
      if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "nn"
        and func.attr == "max_pool"
      ):
        raise AssertionError(f"{path.name}:{node.lineno} calls nn.max_pool; use ops.pool's")
