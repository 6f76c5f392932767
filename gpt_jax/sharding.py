"""Device mesh and shardings: data parallel over every device (1 CPU, 8 simulated CPUs, a TPU/GPU slice).

Parameters and optimizer state are replicated; batches are split along their first axis over the "data" axis.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


# On CPU, data parallelism over per-core devices pays for small models (XLA runs their small matmuls on one core
# each) and costs for large ones (whose big matmuls already use every core, while the replicated optimizer update
# and gradient all-reduce are paid per device); docs/performance.md has the measurements.
CPU_DATA_PARALLEL_MAX_PARAMS = 20_000_000


def data_devices(batch_size: int, grad_accum_steps: int = 1, n_params: int = 0):
    """The devices a data-parallel mesh spans: all accelerators (a batch that does not split over them is an
    error, see `check_batch_size`); on CPU, where the "devices" are threads over the same cores
    (`--xla_force_host_platform_device_count`), as many as divide the microbatch evenly, and one for models
    over CPU_DATA_PARALLEL_MAX_PARAMS."""
    devices = jax.devices()
    if devices[0].platform != "cpu":
        return devices
    if n_params > CPU_DATA_PARALLEL_MAX_PARAMS:
        return devices[:1]
    n, micro = len(devices), max(batch_size // max(grad_accum_steps, 1), 1)
    while micro % n:
        n -= 1
    return devices[:n]


def data_mesh(batch_size: int, grad_accum_steps: int = 1, n_params: int = 0) -> Mesh:
    """The data-parallel mesh of a training run (`data_devices`), checked against its batch: every device and
    every microbatch gets the same number of rows."""
    mesh = make_mesh(data_devices(batch_size, grad_accum_steps, n_params))
    check_batch_size(batch_size, mesh)
    if batch_size % (grad_accum_steps * mesh.devices.size):
        raise ValueError(f"train.batch_size={batch_size} must be divisible by train.grad_accum_steps="
                         f"{grad_accum_steps} x {mesh.devices.size} devices")
    return mesh


def cpu_threads(mesh: Mesh) -> bool:
    """Whether the mesh's devices are threads of one CPU (`--xla_force_host_platform_device_count`)."""
    return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"


def one_step_in_flight(step, mesh: Mesh):
    """`step` (a jitted function with collectives), made to wait for its outputs on a multi-device CPU mesh.

    XLA:CPU runs every device's program on one thread pool of one thread per core, and an all-reduce blocks its
    thread until all devices arrive. With several steps dispatched ahead (JAX's asynchronous dispatch), one
    device can reach step s+1's all-reduce while another is still in step s's, both pool threads end up waiting
    in different rendezvous, and XLA aborts the process. Within one step every device passes the same collectives
    in the same order, so one step in flight is safe. The cost: the host's dispatch of the next step no longer
    overlaps this one (docs/performance.md)."""
    if not cpu_threads(mesh):
        return step

    @functools.wraps(step)
    def synchronous(*args):
        return jax.block_until_ready(step(*args))

    synchronous.lower = step.lower  # keep the AOT interface (cost analysis, HLO dumps)
    return synchronous


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"{what}={batch_size} is not divisible by the {n} devices of the mesh; "
                         f"use a multiple of {n}")


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Host numpy batch -> global arrays sharded along the batch axis."""
    return jax.device_put(batch, batch_sharding(mesh))
