"""The optimizer and the update step, shared by pre-training and fine-tuning.

`TrainState`; AdamW with weight decay on matrices only; the learning-rate schedules; a state created already
placed on the mesh; and `make_train_step(loss_fn, ...)`: one jitted step (state donated) with gradient
accumulation, per-row dropout keys and data parallelism, whatever the loss.

The loss contract that makes accumulation and data parallelism exact: `loss_fn(params, batch, rng, rows)` returns
`(loss, metrics)` as weighted *sums* over the rows it is given, with weights normalized over the whole batch
beforehand (`normalize(batch)`, run on the global batch inside the step). The global loss is then the plain sum of
any split's parts, however the rows are divided among devices and microbatches.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional, Union

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from gpt_jax import sharding as shard_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 (): optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 (2,): base key; the dropout key of step s is fold_in(rng, s)


NO_DECAY = ("bias", "scale")  # parameter names of biases and LayerNorm gains


def decay_mask(params):
    """Weight decay on matrices (dense kernels and embedding tables), none on biases and LayerNorm gains/biases:
    the GPT-1 paper's "all non bias or gain weights". Decided by name, not rank: the scanned blocks' biases and
    gains are stacked over layers into matrices."""
    def decays(path, p):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) not in NO_DECAY
    return jax.tree_util.tree_map_with_path(decays, params)


def make_schedule(optim, max_steps: int):
    """Learning rate at each step: a linear warmup from 0, then `optim.schedule` (cosine | linear | constant)."""
    lr, warmup = float(optim.learning_rate), int(optim.warmup_steps)
    if optim.schedule == "cosine":  # cosine to min_learning_rate at max_steps
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(max_steps, warmup + 1),
                                                  end_value=float(optim.min_learning_rate))
    if optim.schedule == "linear":  # linear decay to 0 at max_steps
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)),
                                     optax.linear_schedule(lr, 0.0, max(max_steps - warmup, 1))], [max(warmup, 1)])
    if optim.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
                                    [max(warmup, 1)])
    raise ValueError(f"unknown optim.schedule {optim.schedule!r}; use 'cosine', 'linear' or 'constant'")


def make_optimizer(optim, max_steps: int):
    """(optax transformation, schedule): optional global-norm clipping, then AdamW with decoupled decay on
    matrices."""
    schedule = make_schedule(optim, max_steps)
    parts = []
    if optim.grad_clip:
        parts.append(optax.clip_by_global_norm(float(optim.grad_clip)))
    parts.append(optax.adamw(schedule, b1=float(optim.beta1), b2=float(optim.beta2), eps=float(optim.eps),
                             weight_decay=float(optim.weight_decay), mask=decay_mask))
    return optax.chain(*parts), schedule


# ----------------------------------------------------------------------------------------- state

Params = Union[Any, Callable[[jax.Array], Any]]  # a params pytree, or a function of the init key that draws one


def _state_fn(tx, seed: int, params: Params):
    """A function building the TrainState: params drawn from `seed` (or the given ones), fresh optimizer state."""
    init_key, rng = jax.random.split(jax.random.PRNGKey(seed))

    def make(given):
        p = params(init_key) if callable(params) else given
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p), rng=rng)

    return make, (None if callable(params) else params)


def init_state(tx, seed: int, mesh, params: Params) -> TrainState:
    """A fresh state, created directly with its place on the mesh (replicated); given params (e.g. pre-trained, on
    one device) are copied there first."""
    make, given = _state_fn(tx, seed, params)
    repl = shard_lib.replicated(mesh)
    return jax.jit(make, out_shardings=repl)(None if given is None else jax.device_put(given, repl))


def abstract_state(tx, seed: int, mesh, params: Params) -> TrainState:
    """The state's shapes, dtypes and shardings without computing it: the restore target of a checkpoint."""
    make, given = _state_fn(tx, seed, params)
    shapes = jax.eval_shape(make, given)
    repl = shard_lib.replicated(mesh)
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), shapes)


# ----------------------------------------------------------------------------------------- the step


def per_row(fn, rng, rows, *row_args):
    """`fn(*one_row_args, key)` vmapped over the rows of `row_args`; row r's key is fold_in(rng, rows[r]), its index
    in the global batch, so its dropout masks do not depend on how the batch is split over devices or
    microbatches. The model's matmuls still see all rows at once."""
    keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, rows)
    return jax.vmap(fn)(*row_args, keys)


def _batch_rows(batch) -> int:
    return jax.tree_util.tree_leaves(batch)[0].shape[0]


def _accumulated(loss_fn, n_micro: int):
    """(params, batch, key, first_row) -> (loss, metrics, grads) summed over `n_micro` microbatches of `batch`,
    whose row r is row first_row + r of the global batch."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def run(params, batch, key, first_row):
        n_rows = _batch_rows(batch)
        if n_micro == 1:
            (loss, metrics), grads = grad_fn(params, batch, key, first_row + jnp.arange(n_rows))
            return loss, metrics, grads
        # microbatch i takes rows i, i + n_micro, i + 2 n_micro, ...: every device keeps its own rows
        micro = jax.tree_util.tree_map(lambda x: jnp.swapaxes(x.reshape(-1, n_micro, *x.shape[1:]), 0, 1), batch)

        def one(i, micro_batch):
            rows = first_row + i + n_micro * jnp.arange(n_rows // n_micro)
            (loss, metrics), grads = grad_fn(params, micro_batch, key, rows)
            return loss, metrics, grads

        def body(total, xs):
            return jax.tree_util.tree_map(jnp.add, total, one(*xs)), None

        first = jax.tree_util.tree_map(lambda x: x[0], micro)
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, 0, first))
        total, _ = jax.lax.scan(body, zeros, (jnp.arange(n_micro), micro))
        return total

    return run


def _reduced_over_devices(accumulated, mesh):
    """Each CPU device computes its rows' sums in `shard_map`; loss, metrics and gradients are then summed over the
    devices as one flat buffer (XLA:CPU synchronizes its devices once per all-reduced array)."""

    def local(params, batch, key):
        first = jax.lax.axis_index("data") * _batch_rows(batch)
        flat, unravel = ravel_pytree(accumulated(params, batch, key, first))
        return unravel(jax.lax.psum(flat, "data"))

    # check_vma=False: per-device values stay unreduced (no automatic psum per parameter) until the one psum
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=P(), check_vma=False)


def make_train_step(loss_fn: Callable, tx, mesh, *, grad_accum_steps: int = 1, schedule=None,
                    normalize: Optional[Callable] = None, flat_grad_reduce: Optional[bool] = None):
    """The jitted `train_step(state, batch) -> (state, metrics)`; `state` is donated.

    loss_fn(params, batch, rng, rows) -> (loss, metrics): weighted sums over the given rows (see the module
    docstring); normalize(batch) -> batch runs first, on the whole batch. Data parallel over the mesh: on
    accelerators XLA's partitioner places the gradient all-reduces, where they overlap the backward pass; where the
    devices are CPU threads (`flat_grad_reduce`, the default there) one flat all-reduce per step."""
    n_micro = int(grad_accum_steps)
    repl, data = shard_lib.replicated(mesh), shard_lib.batch_sharding(mesh)
    accumulated = _accumulated(loss_fn, n_micro)
    if flat_grad_reduce is None:
        flat_grad_reduce = shard_lib.cpu_threads(mesh)
    summed = _reduced_over_devices(accumulated, mesh) if flat_grad_reduce else partial(accumulated, first_row=0)

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(state.rng, state.step)
        if normalize is not None:
            batch = normalize(batch)
        loss, metrics, grads = summed(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        metrics = {"loss": loss, **metrics, "grad_norm": grad_norm,
                   "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}  # read by the loop's non-finite guard
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    step = jax.jit(train_step, donate_argnums=0, in_shardings=(repl, data), out_shardings=(repl, repl))
    return shard_lib.one_step_in_flight(step, mesh)
