"""The tree is clean under ruff (lint and format), as configured in pyproject.toml."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff(command):
  ruff = shutil.which("ruff")
  assert ruff, "ruff is a dev dependency: pip install -e '.[dev]'"
  result = subprocess.run([ruff, *command], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
