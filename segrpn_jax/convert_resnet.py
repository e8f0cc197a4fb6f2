"""Converts a torchvision ResNet state dict (.pth) to .npz, once, so training needs no torch.

  python -m segrpn_jax.convert_resnet --input resnet50-0676ba61.pth \\
      --output resnet50.npz --depth 50

Reading a .pth needs PyTorch (`pip install torch`); .safetensors and .npz inputs
are accepted too. The keys are checked against ResNet-<depth> before anything is
written, and the written file is read back through `load_torchvision_resnet`.
The .npz holds the same keys as the input (fc.* and num_batches_tracked included;
the loader skips them), so `config.model.pretrained` can point at it directly.
"""

import argparse
import sys

import jax
import numpy as np

from segrpn_jax import pretrained


def main(argv: list[str] | None = None) -> int:
  """Runs the conversion.

  Args:
    argv: command-line arguments without the program name (None: sys.argv[1:]).

  Returns:
    The process exit status (0 on success; bad input raises with the reason).
  """
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", required=True, help="torchvision state dict: .pth/.safetensors")
  parser.add_argument("--output", required=True, help="the .npz to write")
  parser.add_argument(
    "--depth", type=int, required=True, choices=(18, 34, 50, 101), help="ResNet depth"
  )
  args = parser.parse_args(argv)
  if not args.output.endswith(".npz"):
    parser.error(f"--output must end in .npz, got {args.output!r}")

  state = pretrained.read_state_dict(args.input)
  # Fails with the offending keys before anything is written.
  variables = pretrained.variables_from_state_dict(state, args.depth, source=args.input)
  np.savez(args.output, **{k: np.asarray(v) for k, v in state.items()})

  reloaded = pretrained.load_torchvision_resnet(args.output, args.depth)
  if not jax.tree.all(jax.tree.map(np.array_equal, reloaded, variables)):
    raise RuntimeError(f"{args.output} does not read back as the values of {args.input}.")
  num_values = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables))
  print(
    f"Wrote {args.output}: {len(state)} keys, {num_values:,} backbone values "
    f"(ResNet-{args.depth}, fc.* and num_batches_tracked kept but unused)."
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
