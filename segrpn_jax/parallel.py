"""Data parallelism: the ('data',) device mesh, host batches to global arrays and back."""

from collections.abc import Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh() -> Mesh:
  """A one-axis ('data',) mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict, sharding: NamedSharding, keys: Iterable[str]) -> dict:
  """Per-process NumPy batch -> global jax.Arrays sharded along the leading axis."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
    for k in keys
    if k in batch
  }


def to_host(tree):
  """Global arrays -> NumPy on every process (all-gathered across processes when several)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def gather_host(tree):
  """Per-process NumPy arrays -> their concatenation over processes (in process order)."""
  if jax.process_count() == 1:
    return tree
  return multihost_utils.process_allgather(tree, tiled=True)
