"""ALPS (Meng et al., NeurIPS 2024): the layer's reconstruction min ||X (W - W')^T||^2 over W' in the sparsity set
(unstructured per row, or N:M), solved by ADMM, then a conjugate-gradient refit of the kept weights.

With H = X^T X (damped by `damping` x its mean diagonal, then scaled to a unit diagonal: W~ = W diag(d),
H~ = diag(d)^-1 H diag(d)^-1, d = sqrt(diag H), which is the preconditioning of the paper), ADMM alternates

    V <- (W~ H~ - L + rho D) (H~ + rho I)^-1        (the dense least-squares step, from one eigendecomposition)
    D <- projection of V + L / rho onto the sparsity set (largest magnitudes per row, or per N:M group)
    L <- L + rho (V - D)

with the penalty rho starting at `rho0` and multiplied by 1.3 (1.2, 1.1 as the support settles) every 3 iterations
while the support still changes; it stops when the support is stable (or after `iterations`). The support of D is
then fixed and the kept weights are refit by preconditioned conjugate gradients (`cg_steps`, Jacobi
preconditioner), rows batched: each row solves (v H~)_S = (w~ H~)_S on its support S. A row keeps the refit only if
it lowers its error. Statistics in float32, the eigendecomposition in float64; never non-finite (a row that would
be falls back to the projection of W~).

Cost per matrix [out, in]: one in x in eigendecomposition (shared by the linears that see one input), then two
out x in x in products per ADMM iteration and one per CG step; memory a few out x in and in x in float32 tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from prunekit.errors import PrunekitError
from prunekit.methods.masks import make_mask
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.registry import Pruned, register

UPDATE_EVERY = 3  # iterations between penalty updates
MIN_ITERATIONS = 30  # before the support may be declared stable on a tiny change
RHO_MAX = 1e6


@dataclass
class NormalizedHessian:
    """What ALPS needs from a Hessian; computed once and shared by the linears that see the same input."""

    hessian: torch.Tensor  # damped, unit-diagonal H~, float32 [in, in]
    scale: torch.Tensor  # d = sqrt(diag of the damped H), float32 [in]
    eigenvalues: torch.Tensor  # of H~, float64
    eigenvectors: torch.Tensor  # of H~, float64
    dead: torch.Tensor  # bool [in]: inputs that never fired


def normalized_hessian(hessian: torch.Tensor, damping: float = 0.01, **_options: Any) -> NormalizedHessian:
    h = hessian.detach().double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damping * h.diagonal().mean())
    scale = h.diagonal().clamp_min(1e-30).sqrt()
    h = h / scale.unsqueeze(0) / scale.unsqueeze(1)
    h = (h + h.T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(h)
    return NormalizedHessian(h.float(), scale.float(), eigenvalues.clamp_min(0), eigenvectors, dead)


def _inverse(prepared: NormalizedHessian, rho: float) -> torch.Tensor:
    q = prepared.eigenvectors
    return ((q / (prepared.eigenvalues + rho)) @ q.T).float()


def _project(values: torch.Tensor, sparsity: float, pattern: SparsityPattern) -> torch.Tensor:
    return make_mask(values.abs(), sparsity, pattern, per_row=True)


def row_errors(target: torch.Tensor, values: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """(w - v) H (w - v)^T per row."""
    delta = target - values
    return ((delta @ hessian) * delta).sum(dim=1)


def refit(target: torch.Tensor, start: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor,
          steps: int) -> torch.Tensor:
    """Preconditioned CG for min_v (w - v) H (w - v)^T with v zero outside `keep`, every row at once."""
    mask = keep.float()
    x = start * mask
    residual = (target @ hessian - x @ hessian) * mask
    inverse_diag = 1.0 / hessian.diagonal().clamp_min(1e-12)
    z = residual * inverse_diag
    direction = z.clone()
    rz = (residual * z).sum(dim=1, keepdim=True)
    for _ in range(steps):
        product = (direction @ hessian) * mask
        curvature = (direction * product).sum(dim=1, keepdim=True)
        alpha = torch.where(curvature > 0, rz / curvature.clamp_min(1e-30), torch.zeros_like(rz))
        x = x + alpha * direction
        residual = residual - alpha * product
        z = residual * inverse_diag
        rz_next = (residual * z).sum(dim=1, keepdim=True)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(1e-30), torch.zeros_like(rz))
        direction = z + beta * direction
        rz = rz_next
        if not bool((rz > 0).any()):
            break
    return x * mask


def alps(weight: torch.Tensor, hessian: torch.Tensor | NormalizedHessian, sparsity: float, pattern: SparsityPattern,
         rho0: float = 0.1, iterations: int = 300, cg_steps: int = 10, damping: float = 0.01) -> Pruned:
    """Prune `weight` [out, in] given its input Hessian [in, in] (X^T X) or its NormalizedHessian."""
    if not rho0 > 0:
        raise PrunekitError(f"alps: the penalty rho0 must be > 0, not {rho0:g} (default 0.1)")
    prepared = hessian if isinstance(hessian, NormalizedHessian) else normalized_hessian(hessian, damping)
    h = prepared.hessian
    target = weight.detach().float() * prepared.scale.unsqueeze(0)  # W~
    target[:, prepared.dead] = 0.0
    y = target @ h
    rho = rho0
    inverse = _inverse(prepared, rho)
    keep = _project(target, sparsity, pattern)
    d = target * keep
    dual = torch.zeros_like(target)
    kept_count = max(int(keep.sum()), 1)
    last_keep = keep
    increased = False
    for iteration in range(1, iterations + 1):
        v = (y - dual + rho * d) @ inverse
        z = v + dual / rho
        keep = _project(z, sparsity, pattern)
        d = z * keep
        dual = dual + rho * (v - d)
        if iteration % UPDATE_EVERY == 0:
            change = int((keep != last_keep).sum()) / kept_count
            last_keep = keep
            if change > 0.1:
                rho *= 1.3
            elif change > 0.005:
                rho *= 1.2
            elif change > 0:
                rho *= 1.1
            elif increased:
                break
            increased = increased or change > 0
            if iteration >= MIN_ITERATIONS and change < 3e-4:
                break
            rho = min(rho, RHO_MAX)
            inverse = _inverse(prepared, rho)
    values = v * keep  # the dense step's values on the final support
    if not torch.isfinite(values).all():
        values = target * keep
    refitted = refit(target, values, keep, h, cg_steps) if cg_steps > 0 else values
    before, after = row_errors(target, values, h), row_errors(target, refitted, h)
    better = (torch.isfinite(after) & (after < before)).unsqueeze(1) & torch.isfinite(refitted).all(1, keepdim=True)
    values = torch.where(better, refitted, values)
    out = values / prepared.scale.unsqueeze(0)
    out[:, prepared.dead] = 0.0
    out = torch.where(torch.isfinite(out), out, torch.zeros_like(out)) * keep
    return Pruned(keep, out)


def check_alps(parameters: dict[str, Any]) -> None:
    rho0 = float(parameters["rho0"])
    if not (math.isfinite(rho0) and rho0 > 0):
        raise PrunekitError(f"alps: the penalty rho0 must be a positive number, not {rho0:g} (default 0.1; the "
                            "Hessian is scaled to a unit diagonal, so 0.01 to 1 are sensible)")
    if int(parameters["iterations"]) < 1:
        raise PrunekitError(f"alps: iterations must be at least 1, not {parameters['iterations']} (default 300)")
    if int(parameters["cg_steps"]) < 0:
        raise PrunekitError(f"alps: cg_steps must be >= 0, not {parameters['cg_steps']} (default 10)")


def shared_normalized(hessian: torch.Tensor, damping: float = 0.01, **_options: Any) -> NormalizedHessian:
    """The normalized Hessian and its eigendecomposition, once for all the linears that see one input."""
    return normalized_hessian(hessian, damping)


@register("alps", "weights", "ADMM support search with a rising penalty, then a CG refit (Meng et al. 2024)",
          needs=("hessian",), options=("damping",), updates_weights=True, prepare=shared_normalized,
          parameters={"rho0": 0.1, "iterations": 300, "cg_steps": 10}, check=check_alps)
def alps_method(weight: torch.Tensor, hessian: torch.Tensor | NormalizedHessian, sparsity: float,
                pattern: SparsityPattern, rho0: float = 0.1, iterations: int = 300, cg_steps: int = 10,
                damping: float = 0.01) -> Pruned:
    return alps(weight, hessian, sparsity, pattern, rho0=rho0, iterations=iterations, cg_steps=cg_steps,
                damping=damping)
