"""GEMM helpers in the forms XLA:CPU's Eigen GEMM runs fast, and a fusion boundary.

Eigen computes `a . b^T` (both operands contracting their minor axis: the
input gradient of every 1x1 convolution and the forward of every transposed
convolution) far below its `a . b` speed when `b` has many rows, and
pathologically when `a` has only a few. `dot_nt` picks matrix-vector
products for a few rows, a once-transposed `b` for many, and XLA's own form
in between (thresholds and measurements: benchmarks/README.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

GEMV_MAX_ROWS = 8
NT_TRANSPOSE_MIN_ROWS = 2048


def dot_nt(a: Array, b: Array) -> Array:
  """`a (m, k) . b (n, k)^T` in the form XLA:CPU's GEMM runs fast."""
  m, n = a.shape[0], b.shape[0]
  if m <= GEMV_MAX_ROWS:
    return jnp.stack([jax.lax.dot_general(b, a[i], (((1,), (0,)), ((), ()))) for i in range(m)])
  if n >= NT_TRANSPOSE_MIN_ROWS:
    # The barrier keeps XLA from folding the transpose back into the dot.
    return jnp.matmul(a, jax.lax.optimization_barrier(b.T))
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())))


def dot_tn(a: Array, b: Array) -> Array:
  """`a (k, m)^T . b (k, n)`: the kernel-gradient contraction over pixels."""
  return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())))


@jax.custom_vjp
def matmul(x: Array, w: Array) -> Array:
  """`x (m, k) . w (k, n)` whose input gradient `g . w^T` takes `dot_nt`'s fast form."""
  return jnp.matmul(x, w)


def _matmul_fwd(x, w):
  return jnp.matmul(x, w), (x, w)


def _matmul_bwd(res, g):
  x, w = res
  return dot_nt(g, w), dot_tn(x, g)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def matmul_nt(a: Array, b: Array) -> Array:
  """`dot_nt(a, b)` (`a . b^T`) with the plain GEMM gradients `g . b` and `g^T . a`."""
  return dot_nt(a, b)


def _matmul_nt_fwd(a, b):
  return dot_nt(a, b), (a, b)


def _matmul_nt_bwd(res, g):
  a, b = res
  return jnp.matmul(g, b), dot_tn(g, a)


matmul_nt.defvjp(_matmul_nt_fwd, _matmul_nt_bwd)


def materialize(v: Array) -> Array:
  """`v`, computed once into its own buffer: a fusion boundary for XLA:CPU.

  XLA:CPU copies cheap elementwise producers into every fusion that consumes
  them (and `lax.optimization_barrier` is gone before fusion runs), so a value
  feeding kh*kw per-tap fusions would have the chain behind it recomputed per
  tap. A while loop is never fused through; its trip count is read from `v`
  (1, or 0 for a NaN first element) so no pass can remove it, and its body
  returns `v` unchanged. Costs one copy of `v`; meant for CPU programs (on
  GPU/TPU the loop condition is a host round trip). Differentiable (identity
  tangent), also twice.
  """
  return _materialized(v) if v.size else v


@jax.custom_jvp
def _materialized(v: Array) -> Array:
  first = v.reshape(-1)[0]
  trips = (first == first).astype(jnp.int32)

  def body(carry):
    i, u = carry
    return i + 1, jnp.where(i < 0, jnp.zeros_like(u), u)

  return jax.lax.while_loop(lambda carry: carry[0] < trips, body, (jnp.int32(0), v))[1]


@_materialized.defjvp
def _materialized_jvp(primals, tangents):
  return _materialized(primals[0]), tangents[0]
