"""The project's own errors and how the command-line tools report them.

Every problem a person can fix (a config key, a workdir, a checkpoint, a data or input file, a
loss that stopped being finite) is raised as a `UserError`: its message starts with the cause,
names the key, file or value, and says what would fix it. The tools (`segrpn_jax.main`,
`segrpn_jax.predict`, `segrpn_jax.paper.*`, `segrpn_jax.convert_resnet`) run their `main`
through `run`, which prints such an error as one block and exits with status 2; the traceback is
printed only with `--verbose` or `SEGRPN_VERBOSE=1`. Any other exception is a bug and keeps its
traceback.

The subclasses also derive from the built-in exception a caller would expect (`ValueError`,
`FileNotFoundError`, ...), so `except ValueError` keeps working.
"""

import os
import sys
from collections.abc import Callable

from absl import app, flags

EXIT_USER_ERROR = 2  # a UserError: the message says what to fix
VERBOSE_ENV = "SEGRPN_VERBOSE"


class UserError(Exception):
  """A problem the user can fix; the message is the whole report (cause, key/file/value, fix)."""


class ConfigError(UserError, ValueError):
  """A config value or key that cannot work."""


class WorkdirError(UserError, RuntimeError):
  """A workdir that belongs to another run or model, or is locked by a running process."""


class CheckpointError(UserError, RuntimeError):
  """A checkpoint that cannot be restored or written."""


class DataError(UserError, ValueError):
  """A dataset, data file or batch that does not hold what the run needs."""


class InputFileError(UserError, FileNotFoundError):
  """A file or folder named on the command line that is missing or of the wrong kind."""


class TrainingError(UserError, FloatingPointError):
  """Training cannot go on (a loss that is not finite)."""


flags.DEFINE_bool("verbose", False, f"Print the traceback of an error (also: {VERBOSE_ENV}=1).")


def verbose(argv: list[str] | None = None) -> bool:
  """Whether tracebacks are wanted: `--verbose` on the command line or SEGRPN_VERBOSE=1."""
  argv = sys.argv if argv is None else argv
  return "--verbose" in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def expand_path(path: str | None) -> str | None:
  """`~` and environment variables expanded, as a shell would have (a quoted `--workdir=~/run`
  otherwise becomes a folder named `~`)."""
  if path is None:
    return None
  return os.path.expandvars(os.path.expanduser(path))


def report(error: BaseException) -> str:
  """The block printed for a UserError: 'error: <message>' and how to see the traceback."""
  return f"error: {error}\n(run with --verbose or {VERBOSE_ENV}=1 for the traceback)\n"


def run(main: Callable[..., int | None], *args, **kwargs) -> int:
  """Calls main(*args, **kwargs) and returns its exit status; a UserError becomes one printed
  block on stderr and EXIT_USER_ERROR (raised again when verbose)."""
  try:
    status = main(*args, **kwargs)
  except UserError as e:
    if verbose():
      raise
    sys.stderr.write(report(e))
    sys.stderr.flush()
    return EXIT_USER_ERROR
  return 0 if status is None else int(status)


_HELP_FLAGS = ("--help", "-help", "-?", "--helpshort", "-helpshort", "--helpfull", "-helpfull")


def check_command_line(argv: list[str], flag_values: flags.FlagValues, required) -> None:
  """A tool's command line after absl parsed it: no stray arguments, every required flag given.

  Args:
    argv: what absl left after the flags (the program name only, when the line is right).
    flag_values: the parsed flags.
    required: names of the flags that must have a value (not None, not empty).

  Raises:
    app.UsageError: naming the stray arguments or the first missing flag.
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in required:
    if flag_values[name].value in (None, ""):
      raise app.UsageError(f"--{name} is required.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (app.parse_flags_with_usage)."""
  return app.parse_flags_with_usage(argv)


def app_run(
  main: Callable[[list[str]], int | None],
  flags_parser: Callable[[list[str]], list[str]] | None = None,
) -> None:
  """absl's app.run(main) for a tool's `if __name__ == "__main__":`, with UserErrors reported
  as one block (run above), also those raised by `flags_parser` (default: absl's own), and
  --help exiting with status 0, as help does in other command-line tools (absl's exits with 1).
  """
  parser = flags_parser or parse_flags

  def parse(argv: list[str]) -> list[str]:
    try:
      return parser(argv)
    except UserError as e:
      if verbose(argv):
        raise
      sys.stderr.write(report(e))
      sys.exit(EXIT_USER_ERROR)
    except SystemExit as e:
      if e.code == 1 and any(arg in _HELP_FLAGS for arg in argv[1:]):
        raise SystemExit(0) from None
      raise

  app.run(lambda argv: run(main, argv), flags_parser=parse)
