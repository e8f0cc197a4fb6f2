"""The package as a user installs it: `pip install .` (not editable) into a fresh virtual
environment, then the tools from an empty folder; and the README's test command is what CI runs.

The environment sees the packages of the one running the tests (--system-site-packages, and a .pth
for an outer venv) and the package is installed with --no-deps --no-build-isolation, so nothing
is downloaded. It is installed from a copy of
pyproject.toml, README.md and segrpn_jax/ only: what the wheel holds comes from the package, not
from files beside it in the clone.
"""

import os
import pathlib
import re
import shlex
import shutil
import site
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOLS = {  # module -> a flag its --help must list
  "segrpn_jax.paper.reproduce": "--table",
  "segrpn_jax.paper.figures": "--workdir",
  "segrpn_jax.predict": "--score_threshold",
  "segrpn_jax.convert_resnet": "--depth",
}


def _environment() -> dict:
  """This process's environment without what would make the clone importable or fetch anything."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
  env.update(
    PIP_NO_INDEX="1",
    PIP_DISABLE_PIP_VERSION_CHECK="1",
    JAX_PLATFORMS="cpu",
    TF_CPP_MIN_LOG_LEVEL="2",
    XLA_FLAGS="",
  )
  return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  """(python of a fresh venv with the package installed from a copy, an empty folder, its env)."""
  tmp = tmp_path_factory.mktemp("install")
  source = tmp / "source"
  shutil.copytree(ROOT / "segrpn_jax", source / "segrpn_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, source / name)
  env = _environment()
  # pip itself comes from the system site-packages, which the environment sees.
  subprocess.run(
    [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(tmp / "venv")],
    check=True, env=env,
  )  # fmt: skip
  python = str(tmp / "venv" / ("Scripts" if os.name == "nt" else "bin") / "python")
  # A venv made from within a venv sees the base interpreter's packages, not the outer venv's:
  # this one is given the packages of the environment running the tests (theirs .pth included).
  purelib = subprocess.run(
    [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
    capture_output=True, text=True, check=True, env=env,
  ).stdout.strip()  # fmt: skip
  outer = [p for p in site.getsitepackages() if os.path.isdir(p)]
  with open(os.path.join(purelib, "_tests_outer_environment.pth"), "w") as f:
    f.write(f"import site; [site.addsitedir(p) for p in {outer!r}]\n")
  empty = tmp / "empty"
  empty.mkdir()
  done = subprocess.run(
    [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", str(source)],
    capture_output=True, text=True, env=env, cwd=empty,
  )  # fmt: skip
  assert done.returncode == 0, done.stdout + done.stderr
  return python, empty, env


def _run(venv, *args: str) -> subprocess.CompletedProcess:
  python, empty, env = venv
  done = subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=empty)
  assert not any(empty.iterdir()), "a tool wrote into the working folder"
  return done


def test_the_installed_package_is_a_copy_in_the_environment(venv):
  done = _run(venv, "-c", "import segrpn_jax, sys; print(segrpn_jax.__file__); print(sys.prefix)")
  assert done.returncode == 0, done.stderr
  package, prefix = done.stdout.split()
  assert package.startswith(prefix) and "site-packages" in package  # not the clone, not editable
  assert not package.startswith(str(ROOT))


def test_the_tools_run_from_an_empty_folder(venv):
  for module, flag in TOOLS.items():
    done = _run(venv, "-m", module, "--help")
    assert done.returncode == 0, f"{module}:\n{done.stderr[-3000:]}"
    assert flag in done.stdout, f"{module} --help does not list {flag}:\n{done.stdout}"


def test_nothing_named_configs_is_installed_and_the_clone_configs_load(venv):
  done = _run(venv, "-c", "import configs")
  assert done.returncode != 0 and "No module named 'configs'" in done.stderr, done.stderr
  # The clone's thin configs/case1.py, loaded as main loads --config (ml_collections
  # config_flags), with its tokens, from a folder that is not the clone.
  case1 = ROOT / "configs" / "case1.py"
  code = (
    "from absl import flags\n"
    "from ml_collections import config_flags\n"
    "config_flags.DEFINE_config_file('config')\n"
    f"flags.FLAGS(['x', '--config={case1}:roi,tiny'])\n"
    "c = flags.FLAGS.config\n"
    "print(c.model.scale_case, c.model.fusion.train, c.data.image_size, c.train.num_steps)\n"
  )
  done = _run(venv, "-c", code)
  assert done.returncode == 0, done.stderr
  assert done.stdout.split() == ["case1", "roi", "(64,", "128)", "2"]


def _code_blocks(markdown: str) -> list[str]:
  return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)


def _commands(script: str) -> list[list[str]]:
  """The commands of shell lines: comments dropped, `&&` chains split, each as its words."""
  commands = []
  for line in script.splitlines():
    words = shlex.split(line, comments=True)
    command: list[str] = []
    for word in [*words, "&&"]:
      if word == "&&":
        if command:
          commands.append(command)
        command = []
      else:
        command.append(word)
  return commands


def test_the_readme_test_command_is_what_ci_runs():
  ci = _commands((ROOT / ".ci" / "run").read_text())
  ci = [c for c in ci if c[0] not in ("set", "cd")]  # the script's own set-up
  assert ci == [["pip", "install", "-e", ".[dev]"], ["pytest", "-q"]]
  # The README's first two code blocks are its two set-up commands (install, then the tests):
  # exactly CI's commands, in CI's order.
  blocks = _code_blocks((ROOT / "README.md").read_text())[:2]
  readme = [command for block in blocks for command in _commands(block)]
  assert readme == ci, f"README's first two code blocks: {readme}; .ci/run: {ci}"
