"""Data parallelism: the ('data',) device mesh, host batches to global arrays and back."""

import functools
from collections.abc import Iterable

import jax
import numpy as np
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


def _identity(tree):
  return tree


@functools.cache
def _replicate(sharding: NamedSharding):
  """A jitted identity onto a replicated sharding: one all-gather program for a whole tree
  (multihost_utils.process_allgather compiles one per array shape)."""
  return jax.jit(_identity, out_shardings=sharding)


def _local_numpy(tree):
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def to_host(tree):
  """Global arrays -> NumPy on every process (all-gathered across processes when several)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return _local_numpy(_replicate(replicated(make_mesh()))(tree))


def gather_host(tree):
  """Per-process NumPy arrays (leading axis: this process's rows; a scalar is one row) -> their
  concatenation over processes, in process order."""
  if jax.process_count() == 1:
    return tree
  # One device per process holds that process's rows; the gather replicates them to all.
  firsts = {}
  for device in jax.devices():
    firsts.setdefault(device.process_index, device)
  mesh = Mesh(np.asarray([firsts[i] for i in range(jax.process_count())]), ("processes",))
  rows = NamedSharding(mesh, P("processes"))
  local = jax.tree.map(np.atleast_1d, tree)
  arrays = jax.tree.map(lambda x: jax.make_array_from_process_local_data(rows, x), local)
  return _local_numpy(_replicate(replicated(mesh))(arrays))
