"""Pure samplers for in-context linear regression prompts.

Shapes (the papers' letters): ``B`` prompts, ``n`` labelled context examples (query excluded),
``d`` covariate dimension.

- ``X``: (B, n, d) context covariates, ``y``: (B, n) their labels,
- ``x_query``: (B, d), ``y_query``: (B,), ``w``: (B, d) the task vector.

x = L ε with Σ = L Lᵀ and ε of i.i.d. unit-variance coordinates, Gaussian (x ~ N(0, Σ)) or uniform on
[−√3, √3] (Σ = I/12 gives von Oswald et al.'s x ~ U(−½, ½)^d); or, for Ahn et al. 2024's heavy-tailed settings,
ε uniform on the unit sphere S^{d−1} (E‖ε‖² = 1), or ε = √G · u with u on the sphere and G ~ Gamma(shape k, scale
θ = √(10/k)), their code's scale (kθ² = 10): E‖ε‖² = kθ is 1 at k = 0.1, and k = 2.5 makes G ~ χ²₅, the squared
radius of N(0, I₅). w ~ N(0, I_d) (family D-Σ) or
w ~ N(0, Σ⁻¹) (D-distorted); y = ⟨w, x⟩ + σ·ε.
Every sampler takes a keyword-only ``generator`` and draws on its device.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
import torch

from icl.config import finite_float, positive_int, square_matrix
from icl.rng import streams

TaskPrior = Literal["identity", "inverse_covariance"]
TASK_PRIORS: tuple[str, ...] = ("identity", "inverse_covariance")
CovariateLaw = Literal["gaussian", "uniform", "sphere", "gamma"]
COVARIATE_LAWS: tuple[str, ...] = ("gaussian", "uniform", "sphere", "gamma")


class RegressionBatch(NamedTuple):
    """A batch of prompts; see the module docstring for shapes."""

    X: torch.Tensor
    y: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    w: torch.Tensor


AHN_SPECTRUM: tuple[float, ...] = (1.0, 1.0, 0.25, 0.0625, 1.0)  # Ahn et al. 2023's Σ eigenvalues (papers/README §1.8)


def check_covariance(covariance: torch.Tensor, name: str = "covariance") -> torch.Tensor:
    """Return ``covariance`` if it is a finite, symmetric positive definite (d, d) matrix, else raise.

    Symmetry is checked to a relative 1e-6 (float32 round-off); positive definiteness by Cholesky.
    """
    square_matrix(name, covariance)
    scale = covariance.abs().max().clamp_min(torch.finfo(covariance.dtype).tiny)
    asymmetry = (covariance - covariance.T).abs().max() / scale
    if asymmetry > 1e-6:
        raise ValueError(f"{name} must be symmetric; max |Σ - Σᵀ| / max |Σ| = {asymmetry.item():.3g}")
    _, info = torch.linalg.cholesky_ex(covariance.double())
    if info.item() != 0:
        eig_min = torch.linalg.eigvalsh(covariance.double()).min().item()
        raise ValueError(f"{name} must be positive definite; its smallest eigenvalue is {eig_min:.3g}")
    return covariance


def random_rotation(dim: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-distributed orthogonal (d, d) matrix: QR of a Gaussian matrix with the sign of R's diagonal fixed."""
    dim = positive_int("dim", dim)
    gaussian = torch.randn(dim, dim, generator=generator, device=generator.device, dtype=dtype)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def condition_number_spectrum(dim: int, condition_number: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Eigenvalues 1 = λ₁ ≥ … ≥ λ_d = 1/κ, geometrically spaced; (d,). κ = 1 gives all ones."""
    dim = positive_int("dim", dim)
    condition_number = finite_float("condition_number", condition_number, minimum=1.0)
    exponents = torch.linspace(0.0, 1.0, dim, dtype=dtype) if dim > 1 else torch.zeros(1, dtype=dtype)
    return condition_number ** (-exponents)


def covariance_from_spectrum(eigenvalues: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Σ = U diag(λ) Uᵀ with a Haar-random rotation U; eigenvalues: (d,) positive -> (d, d) float64."""
    eigenvalues = torch.as_tensor(eigenvalues, dtype=torch.float64)
    if eigenvalues.ndim != 1 or eigenvalues.numel() == 0:
        raise ValueError(f"eigenvalues must be a non-empty 1-d tensor, got shape {tuple(eigenvalues.shape)}")
    if not (torch.isfinite(eigenvalues).all() and (eigenvalues > 0).all()):
        raise ValueError(f"eigenvalues must be finite and positive, got {eigenvalues.tolist()}")
    rotation = random_rotation(eigenvalues.numel(), generator=generator).to(eigenvalues.device)
    covariance = (rotation * eigenvalues) @ rotation.T
    return (covariance + covariance.T) / 2


def covariance_from_condition_number(dim: int, condition_number: float, *, generator: torch.Generator) -> torch.Tensor:
    """A randomly rotated Σ with spectrum :func:`condition_number_spectrum`; κ = 1 gives exactly I_d."""
    spectrum = condition_number_spectrum(dim, condition_number)
    if condition_number == 1:
        return torch.eye(dim, dtype=torch.float64)
    return covariance_from_spectrum(spectrum, generator=generator)


def _two_level_factors(
    count: int, dim: int, condition_number: float, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Haar-random rotations U (count, d, d) float64 and the two-level eigenvalues λ (d,) of
    :func:`two_level_covariances`."""
    count, dim = positive_int("count", count), positive_int("dim", dim)
    condition_number = finite_float("condition_number", condition_number, minimum=1.0)
    levels = torch.ones(dim, dtype=torch.float64, device=generator.device)
    levels[: (dim + 1) // 2] = condition_number
    levels *= dim / levels.sum()
    gaussian = torch.randn(count, dim, dim, generator=generator, device=generator.device, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2), levels


def two_level_covariances(count: int, dim: int, condition_number: float, *, generator: torch.Generator) -> torch.Tensor:
    """``count`` covariances U diag(λ) Uᵀ, each with its own Haar-random rotation U: the first ⌈d/2⌉ eigenvalues at
    a high level and the rest κ times lower, with trace d (Fu et al.'s ill-conditioned prompts, their κ(Σ) = 100,
    with a fresh eigenbasis per prompt as their text says). -> (count, d, d) float64."""
    rotations, levels = _two_level_factors(count, dim, condition_number, generator=generator)
    covariance = (rotations * levels) @ rotations.mT
    return (covariance + covariance.mT) / 2


def sample_two_level_regression(
    n_prompts: int,
    n_context: int,
    dim: int,
    condition_number: float,
    *,
    generator: torch.Generator,
    lead: tuple[int, ...] = (),
    dtype: torch.dtype = torch.float32,
) -> RegressionBatch:
    """Prompts that each have their own covariance from :func:`two_level_covariances`: x = U diag(√λ) Uᵀ ε, w ~ N(0,
    I_d), y = ⟨w, x⟩. Shapes of :func:`sample_regression` with the leading axes ``lead``."""
    n_prompts, n_context = positive_int("n_prompts", n_prompts), positive_int("n_context", n_context)
    lead = tuple(positive_int(f"lead[{i}]", size) for i, size in enumerate(lead))
    count = n_prompts * math.prod(lead)
    rotations, levels = _two_level_factors(count, dim, condition_number, generator=generator)
    root = ((rotations * levels.sqrt()) @ rotations.mT).to(dtype).reshape(*lead, n_prompts, dim, dim)
    raw = torch.randn(*lead, n_prompts, n_context + 1, dim, generator=generator, device=generator.device, dtype=dtype)
    x = raw @ root  # root is symmetric: each row is (root ε)ᵀ
    w = torch.randn(*lead, n_prompts, dim, generator=generator, device=generator.device, dtype=dtype)
    y = (x @ w.unsqueeze(-1)).squeeze(-1)
    return RegressionBatch(
        X=x[..., :n_context, :], y=y[..., :n_context], x_query=x[..., n_context, :], y_query=y[..., n_context], w=w
    )


def sample_regression(
    n_prompts: int,
    n_context: int,
    covariance: torch.Tensor,
    *,
    generator: torch.Generator,
    task_prior: TaskPrior = "identity",
    covariate_law: CovariateLaw = "gaussian",
    gamma_shape: float = 0.1,
    noise_std: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> RegressionBatch:
    """Draw ``n_prompts`` prompts of ``n_context`` labelled examples and one query each.

    covariance: (d, d) or (E, d, d) for E independent task families (then every output gains a
    leading E axis: X is (E, B, n, d)). x = L ε with Σ = L Lᵀ; w = L⁻ᵀ ε has covariance Σ⁻¹.
    Randomness is drawn on ``generator``'s device, in ``dtype``.
    """
    n_prompts = positive_int("n_prompts", n_prompts)
    n_context = positive_int("n_context", n_context)
    noise_std = finite_float("noise_std", noise_std, minimum=0.0)
    gamma_shape = finite_float("gamma_shape", gamma_shape, minimum=0.0, strict=True)
    if task_prior not in TASK_PRIORS:
        raise ValueError(f"unknown task_prior {task_prior!r}; choose one of {sorted(TASK_PRIORS)}")
    if covariate_law not in COVARIATE_LAWS:
        raise ValueError(f"unknown covariate_law {covariate_law!r}; choose one of {sorted(COVARIATE_LAWS)}")
    device = generator.device
    family = covariance.reshape(-1, *covariance.shape[-2:])
    for i, cov in enumerate(family):
        check_covariance(cov, "covariance" if covariance.ndim == 2 else f"covariance[{i}]")
    lead = covariance.shape[:-2]
    dim = covariance.shape[-1]
    chol = torch.linalg.cholesky(covariance.to(device=device, dtype=torch.float64))  # (..., d, d)

    shape = (*lead, n_prompts, n_context + 1, dim)
    if covariate_law == "gaussian":
        raw = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    elif covariate_law == "uniform":  # on [−√3, √3]: mean 0, variance 1
        raw = torch.rand(shape, generator=generator, device=device, dtype=dtype).sub_(0.5).mul_(2 * 3**0.5)
    else:
        raw = sphere_or_gamma(shape, covariate_law, gamma_shape, generator=generator, dtype=dtype)
    w = torch.randn(*lead, n_prompts, dim, generator=generator, device=device, dtype=dtype)
    if task_prior == "inverse_covariance":
        # w = L⁻ᵀ ε  <=>  Lᵀ w = ε: one triangular solve per family, the B task vectors as its columns
        # (a batch of B tiny solves costs more than the rest of the sampler).
        w = torch.linalg.solve_triangular(chol.mT, w.to(torch.float64).mT, upper=True).mT.to(dtype)
    # x = L ε and y = ⟨w, x⟩ = ⟨Lᵀ w, ε⟩: one product per prompt, ε [Lᵀ | Lᵀ w], writes both side by side
    # in the token-row layout of icl.tokens.to_tokens (one pass over the batch instead of three).
    projected = (w.to(torch.float64) @ chol).to(dtype)  # (..., B, d): (Lᵀ w)ᵀ = wᵀ L
    factor = torch.cat([chol.to(dtype).mT.unsqueeze(-3).expand(*projected.shape, dim), projected.unsqueeze(-1)], -1)
    rows = raw @ factor  # (..., B, n+1, d+1): row i is (x_iᵀ, y_i); the last row is the query
    if noise_std > 0:
        noise = torch.randn(rows.shape[:-1], generator=generator, device=device, dtype=dtype)
        rows[..., dim] += noise_std * noise
    return RegressionBatch(
        X=rows[..., :n_context, :dim],
        y=rows[..., :n_context, dim],
        x_query=rows[..., n_context, :dim],
        y_query=rows[..., n_context, dim],
        w=w,
    )


def sphere_or_gamma(
    shape: tuple[int, ...], law: str, gamma_shape: float, *, generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """Vectors along the last axis of ``shape``: uniform on the unit sphere (``law="sphere"``), or that times √G with
    G ~ Gamma(k = ``gamma_shape``, θ = √(10/k)) drawn once per vector (``"gamma"``; Ahn et al. 2024's Setting 3).

    torch draws no Gamma variates on a given generator, so G is drawn by NumPy from a seed taken from ``generator``:
    the same generator state gives the same vectors."""
    direction = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    if law == "sphere":
        return direction
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    radius2 = np.random.default_rng(seed).gamma(gamma_shape, math.sqrt(10 / gamma_shape), size=shape[:-1])
    return direction * torch.from_numpy(radius2).sqrt().to(device=generator.device, dtype=dtype).unsqueeze(-1)


def sample_random_diagonal_regression(
    n_prompts: int,
    n_context: int,
    dim: int,
    *,
    generator: torch.Generator,
    lead: tuple[int, ...] = (),
    scale: float = 1.0,
    noise_std: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[RegressionBatch, torch.Tensor]:
    """Prompts that each have their own covariance Λ_τ = scale · diag(λ_τ), λ_τ with i.i.d. Exp(1) entries (Zhang,
    Frei and Bartlett 2023, Thm 4.5 and Fig. 1); x = √(scale λ_τ) ⊙ ε, w ~ N(0, I_d), y = ⟨w, x⟩ + σ·ε.

    Returns the batch (shapes of :func:`sample_regression` with the leading axes ``lead``, e.g. (E,) for an ensemble)
    and the variances scale · λ_τ: (*lead, B, d).
    """
    n_prompts = positive_int("n_prompts", n_prompts)
    n_context = positive_int("n_context", n_context)
    dim = positive_int("dim", dim)
    scale = finite_float("scale", scale, minimum=0.0, strict=True)
    noise_std = finite_float("noise_std", noise_std, minimum=0.0)
    lead = tuple(positive_int(f"lead[{i}]", size) for i, size in enumerate(lead))
    device = generator.device
    variances = scale * torch.empty(*lead, n_prompts, dim, device=device, dtype=dtype).exponential_(generator=generator)
    raw = torch.randn(*lead, n_prompts, n_context + 1, dim, generator=generator, device=device, dtype=dtype)
    x = raw * variances.sqrt().unsqueeze(-2)
    w = torch.randn(*lead, n_prompts, dim, generator=generator, device=device, dtype=dtype)
    y = (x @ w.unsqueeze(-1)).squeeze(-1)
    if noise_std > 0:
        y = y + noise_std * torch.randn(y.shape, generator=generator, device=device, dtype=dtype)
    batch = RegressionBatch(
        X=x[..., :n_context, :], y=y[..., :n_context], x_query=x[..., n_context, :], y_query=y[..., n_context], w=w
    )
    return batch, variances


def restrict_dimensions(batch: RegressionBatch, active: int) -> RegressionBatch:
    """The batch with every coordinate of x from ``active`` on set to 0 and the labels recomputed to match:
    y − ⟨w[active:], x[active:]⟩, so label noise is kept (Garg et al.'s curriculum trains on such prompts first).
    The task vectors w keep all their coordinates."""
    dim = batch.X.shape[-1]
    active = positive_int("active", active)
    if active > dim:
        raise ValueError(f"active must be at most the dimension {dim}, got {active}")
    keep = torch.arange(dim, device=batch.X.device) < active
    dropped_w = batch.w * ~keep  # (..., B, d): the part of w the removed coordinates multiplied
    X = batch.X * keep
    x_query = batch.x_query * keep
    y = batch.y - (batch.X @ dropped_w.unsqueeze(-1)).squeeze(-1)
    y_query = batch.y_query - (batch.x_query * dropped_w).sum(-1)
    return RegressionBatch(X=X, y=y, x_query=x_query, y_query=y_query, w=batch.w)


def rotated_covariances(spectrum: tuple[float, ...], n_seeds: int, *, seed: int, device: str) -> torch.Tensor:
    """(S, d, d) float64: U diag(spectrum) Uᵀ with a random rotation U per seed, from the seed's task stream."""
    generator = streams(seed, device).task
    eigenvalues = torch.tensor(spectrum, dtype=torch.float64)
    return torch.stack([covariance_from_spectrum(eigenvalues, generator=generator) for _ in range(n_seeds)]).to(device)


def truncate_prompts(batch: RegressionBatch, examples: int) -> RegressionBatch:
    """The batch cut to the first ``examples`` examples of each prompt (the query counted last): the first
    ``examples − 1`` become the context and the next one the query. Shapes: X (..., B, examples − 1, d)."""
    total = batch.X.shape[-2] + 1
    examples = positive_int("examples", examples, minimum=2)
    if examples > total:
        raise ValueError(f"examples must be at most the prompt's {total} (context and query), got {examples}")
    xs = torch.cat([batch.X, batch.x_query.unsqueeze(-2)], dim=-2)[..., :examples, :]
    ys = torch.cat([batch.y, batch.y_query.unsqueeze(-1)], dim=-1)[..., :examples]
    return RegressionBatch(X=xs[..., :-1, :], y=ys[..., :-1], x_query=xs[..., -1, :], y_query=ys[..., -1], w=batch.w)
