"""Converts a torchvision ResNet state dict (.pth) to .npz, once, so training needs no torch.

  python -m segrpn_jax.convert_resnet --input=resnet50-0676ba61.pth \\
      --output=weights/resnet50.npz --depth=50

Reading a .pth needs PyTorch (pip install '.[bench]' from a clone); .safetensors and .npz
inputs are accepted too. The keys are checked against ResNet-<depth> before anything is
written, and the written file is read back through `load_torchvision_resnet`.
The .npz holds the same keys as the input (fc.* and num_batches_tracked included;
the loader skips them), so `config.model.pretrained` can point at it directly.
A bad input (a missing file, torch not installed, keys of another depth) is one message
without a traceback (--verbose shows it).
"""

import os

import jax
import numpy as np
from absl import flags

from segrpn_jax import errors, pretrained

DEPTHS = ("18", "34", "50", "101")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags in `flag_values` (tests pass a fresh flags.FlagValues())."""
  fv = flag_values
  flags.DEFINE_string("input", None, "torchvision ResNet state dict: .pth, .safetensors or .npz.",
                      flag_values=fv)  # fmt: skip
  flags.DEFINE_string("output", None, "The .npz file to write.", flag_values=fv)
  flags.DEFINE_enum("depth", None, list(DEPTHS), "ResNet depth of the weights.", flag_values=fv)


def convert(input_path: str, output_path: str, depth: int) -> str:
  """Writes `input_path`'s state dict as the .npz `output_path`, checked and read back.

  Args:
    input_path: a torchvision ResNet state dict (.pth needs torch; .safetensors, .npz).
    output_path: the .npz to write; its folder is created.
    depth: 18, 34, 50 or 101.

  Returns:
    The line to print: the file written, its key and value counts.

  Raises:
    InputFileError: the input does not exist or the output is not a .npz.
    DataError: the input is not a ResNet-<depth> state dict (nothing is written).
    TorchMissingError: a .pth input without torch installed.
  """
  if not output_path.endswith(".npz"):
    raise errors.InputFileError(
      f"--output must end in .npz, got {output_path!r}: name the .npz file to write."
    )
  state = pretrained.read_state_dict(input_path)
  # Fails with the offending keys before anything is written.
  variables = pretrained.variables_from_state_dict(state, depth, source=input_path)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  np.savez(output_path, **{k: np.asarray(v) for k, v in state.items()})

  reloaded = pretrained.load_torchvision_resnet(output_path, depth)
  if not jax.tree.all(jax.tree.map(np.array_equal, reloaded, variables)):
    raise RuntimeError(f"{output_path} does not read back as the values of {input_path}.")
  num_values = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables))
  return (
    f"Wrote {output_path}: {len(state)} keys, {num_values:,} backbone values "
    f"(ResNet-{depth}, fc.* and num_batches_tracked kept but unused)."
  )


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command: converts --input to --output for ResNet --depth.

  Args:
    argv: the arguments left after the flags (none are accepted).
    flag_values: the parsed flags of `define_flags`.
  """
  errors.check_command_line(argv, flag_values, ("input", "output", "depth"))
  print(
    convert(
      errors.expand_path(flag_values.input),
      errors.expand_path(flag_values.output),
      int(flag_values.depth),
    )
  )


if __name__ == "__main__":
  define_flags()
  errors.app_run(main)
