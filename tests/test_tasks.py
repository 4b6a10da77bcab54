"""The prompt samplers: shapes, the laws of x, w and the noise, covariance checks, reproducibility.

Moment checks use k = 5 standard errors computed from the samples' own law (for a Gaussian pair,
Var(u v) = E u² E v² + (E u v)²), so each entry fails by chance with probability < 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from icl import tasks

K_SE = 5.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rotated_covariance(seed: int = 0, condition_number: float = 4.0, dim: int = 4) -> torch.Tensor:
    return tasks.covariance_from_condition_number(dim, condition_number, generator=gen(seed))


def assert_second_moment(samples: torch.Tensor, expected: torch.Tensor) -> None:
    """samples: (N, d) draws of a centred Gaussian with covariance ``expected``."""
    count = samples.shape[0]
    empirical = samples.mT @ samples / count
    diag = torch.diagonal(expected)
    standard_error = ((diag[:, None] * diag[None, :] + expected**2) / count).sqrt()
    assert ((empirical - expected).abs() <= K_SE * standard_error).all(), (empirical, expected)


def test_shapes_and_dtypes() -> None:
    batch = tasks.sample_regression(7, 5, torch.eye(3, dtype=torch.float64), generator=gen())
    shapes = {name: tuple(value.shape) for name, value in batch._asdict().items()}
    assert shapes == {"X": (7, 5, 3), "y": (7, 5), "x_query": (7, 3), "y_query": (7,), "w": (7, 3)}
    assert all(value.dtype == torch.float32 for value in batch)
    batch64 = tasks.sample_regression(2, 1, torch.eye(3), generator=gen(), dtype=torch.float64)
    assert all(value.dtype == torch.float64 for value in batch64)


def test_stacked_covariances_add_a_leading_axis() -> None:
    family = torch.stack([torch.eye(3, dtype=torch.float64), 2 * torch.eye(3, dtype=torch.float64)])
    batch = tasks.sample_regression(6, 4, family, generator=gen())
    assert batch.X.shape == (2, 6, 4, 3) and batch.y.shape == (2, 6, 4)
    assert batch.x_query.shape == (2, 6, 3) and batch.y_query.shape == (2, 6) and batch.w.shape == (2, 6, 3)


def test_x_has_covariance_sigma() -> None:
    covariance = rotated_covariance(1)
    batch = tasks.sample_regression(4000, 9, covariance, generator=gen(2), dtype=torch.float64)
    xs = torch.cat([batch.X, batch.x_query.unsqueeze(1)], dim=1).reshape(-1, 4)  # 40,000 draws
    assert xs.mean(0).abs().max() < K_SE * (torch.diagonal(covariance).max() / xs.shape[0]) ** 0.5
    assert_second_moment(xs, covariance)
    # Power: the identity (what an unscaled sampler would give) is far outside the band.
    with pytest.raises(AssertionError):
        assert_second_moment(xs, torch.eye(4, dtype=torch.float64))


def test_stacked_covariances_are_used_per_family() -> None:
    family = torch.stack([rotated_covariance(3), rotated_covariance(4)])
    batch = tasks.sample_regression(5000, 3, family, generator=gen(5), dtype=torch.float64)
    for e in range(2):
        assert_second_moment(batch.X[e].reshape(-1, 4), family[e])


@pytest.mark.parametrize("prior", ["identity", "inverse_covariance"])
def test_task_vector_law(prior: str) -> None:
    covariance = rotated_covariance(6)
    batch = tasks.sample_regression(20_000, 1, covariance, generator=gen(7), task_prior=prior, dtype=torch.float64)
    expected = torch.eye(4, dtype=torch.float64) if prior == "identity" else torch.linalg.inv(covariance)
    rival = torch.linalg.inv(covariance) if prior == "identity" else torch.eye(4, dtype=torch.float64)
    assert_second_moment(batch.w, expected)
    with pytest.raises(AssertionError):
        assert_second_moment(batch.w, rival)


def test_inverse_covariance_prior_makes_labels_isotropic() -> None:
    """D-distorted data: E y² = d whatever Σ is (papers/README §1.8)."""
    batch = tasks.sample_regression(
        20_000, 1, rotated_covariance(8, 16.0), generator=gen(9), task_prior="inverse_covariance", dtype=torch.float64
    )
    second = batch.y_query.pow(2)
    assert abs(second.mean().item() - 4.0) < K_SE * second.std().item() / second.numel() ** 0.5


def test_inverse_covariance_prior_with_stacked_covariances() -> None:
    family = torch.stack([rotated_covariance(10), rotated_covariance(11)])
    batch = tasks.sample_regression(
        20_000, 1, family, generator=gen(12), task_prior="inverse_covariance", dtype=torch.float64
    )
    for e in range(2):
        assert_second_moment(batch.w[e], torch.linalg.inv(family[e]))


def test_noiseless_labels_are_exactly_linear() -> None:
    batch = tasks.sample_regression(50, 6, rotated_covariance(), generator=gen(), dtype=torch.float64)
    torch.testing.assert_close(batch.y, torch.einsum("bnd,bd->bn", batch.X, batch.w), rtol=0, atol=1e-12)
    torch.testing.assert_close(batch.y_query, (batch.x_query * batch.w).sum(-1), rtol=0, atol=1e-12)


def test_noise_has_variance_noise_std_squared() -> None:
    noise_std = 0.5
    batch = tasks.sample_regression(
        20_000, 4, rotated_covariance(), generator=gen(1), noise_std=noise_std, dtype=torch.float64
    )
    residual = torch.cat(
        [
            batch.y - torch.einsum("bnd,bd->bn", batch.X, batch.w),
            (batch.y_query - (batch.x_query * batch.w).sum(-1)).unsqueeze(-1),
        ],
        dim=-1,
    ).flatten()
    variance = residual.pow(2).mean().item()
    standard_error = noise_std**2 * (2 / residual.numel()) ** 0.5  # Var(ε²) = 2σ⁴
    assert abs(variance - noise_std**2) < K_SE * standard_error
    assert abs(residual.mean().item()) < K_SE * noise_std / residual.numel() ** 0.5


def test_same_seed_bit_identical_other_seed_different() -> None:
    covariance = rotated_covariance()
    a = tasks.sample_regression(8, 5, covariance, generator=gen(42), noise_std=0.1)
    b = tasks.sample_regression(8, 5, covariance, generator=gen(42), noise_std=0.1)
    c = tasks.sample_regression(8, 5, covariance, generator=gen(43), noise_std=0.1)
    for name in a._fields:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert not torch.equal(getattr(a, name), getattr(c, name)), name


@pytest.mark.parametrize(
    "matrix, message",
    [
        (torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "covariance must be symmetric"),
        (torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "covariance must be positive definite"),
        (torch.diag(torch.tensor([1.0, 0.0])), "covariance must be positive definite"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), "covariance has non-finite entries"),
        (torch.tensor([[1.0, float("inf")], [float("inf"), 1.0]]), "covariance has non-finite entries"),
        (torch.ones(2, 3), "covariance must have shape"),
        (torch.ones(3), "covariance must have shape"),
        (torch.ones(0, 0), "covariance must have shape"),
        ([[1.0, 0.0], [0.0, 1.0]], "covariance must be a torch.Tensor"),
    ],
)
def test_check_covariance_rejects(matrix, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tasks.check_covariance(matrix)


def test_check_covariance_accepts_and_returns_spd() -> None:
    covariance = rotated_covariance(0, 100.0)
    assert tasks.check_covariance(covariance) is covariance


def test_sample_regression_checks_its_covariance() -> None:
    with pytest.raises(ValueError, match="covariance must be positive definite"):
        tasks.sample_regression(2, 3, -torch.eye(2), generator=gen())
    family = torch.stack([torch.eye(2), -torch.eye(2)])
    with pytest.raises(ValueError, match=r"covariance\[1\]"):
        tasks.sample_regression(2, 3, family, generator=gen())


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_prompts=0), "n_prompts"),
        (dict(n_context=-1), "n_context"),
        (dict(n_context=2.5), "n_context"),
        (dict(noise_std=-0.1), "noise_std"),
        (dict(noise_std=float("nan")), "noise_std"),
        (dict(task_prior="gaussian"), "task_prior"),
    ],
)
def test_sample_regression_bad_arguments(kwargs: dict, name: str) -> None:
    arguments = dict(n_prompts=2, n_context=3, covariance=torch.eye(2)) | kwargs
    with pytest.raises(ValueError, match=name):
        tasks.sample_regression(**arguments, generator=gen())


@pytest.mark.parametrize("kappa", [1.0, 4.0, 16.0, 1000.0])
def test_condition_number_spectrum_and_covariance(kappa: float) -> None:
    dim = 5
    spectrum = tasks.condition_number_spectrum(dim, kappa)
    expected = torch.tensor([kappa ** (-i / (dim - 1)) for i in range(dim)], dtype=torch.float64)
    torch.testing.assert_close(spectrum, expected, rtol=1e-12, atol=0)
    covariance = tasks.covariance_from_condition_number(dim, kappa, generator=gen())
    torch.testing.assert_close(covariance, covariance.T, rtol=0, atol=0)
    eigenvalues = torch.linalg.eigvalsh(covariance)  # ascending
    torch.testing.assert_close(eigenvalues, expected.flip(0), rtol=1e-10, atol=1e-12)
    assert abs((eigenvalues[-1] / eigenvalues[0]).item() - kappa) < 1e-8 * kappa


def test_condition_number_one_gives_the_identity() -> None:
    covariance = tasks.covariance_from_condition_number(4, 1.0, generator=gen())
    assert torch.equal(covariance, torch.eye(4, dtype=torch.float64))
    assert torch.equal(tasks.condition_number_spectrum(1, 7.0), torch.ones(1, dtype=torch.float64))


def test_rotated_covariance_is_not_diagonal() -> None:
    covariance = tasks.covariance_from_condition_number(4, 16.0, generator=gen())
    off_diagonal = covariance - torch.diag(torch.diagonal(covariance))
    assert off_diagonal.abs().max() > 0.05


@pytest.mark.parametrize("kappa", [0.5, 0.0, -2.0, float("nan"), float("inf")])
def test_condition_number_below_one_is_rejected(kappa: float) -> None:
    with pytest.raises(ValueError, match="condition_number"):
        tasks.covariance_from_condition_number(3, kappa, generator=gen())


def test_covariance_from_spectrum() -> None:
    spectrum = torch.tensor([1.0, 1.0, 0.25, 0.0625, 1.0], dtype=torch.float64)
    covariance = tasks.covariance_from_spectrum(spectrum, generator=gen())
    torch.testing.assert_close(torch.linalg.eigvalsh(covariance), spectrum.sort().values, rtol=1e-12, atol=1e-12)
    for bad in (torch.tensor([1.0, 0.0]), torch.tensor([1.0, float("nan")]), torch.ones(2, 2), torch.ones(0)):
        with pytest.raises(ValueError, match="eigenvalues"):
            tasks.covariance_from_spectrum(bad, generator=gen())


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_random_rotation_is_orthogonal_and_reproducible(dim: int) -> None:
    rotation = tasks.random_rotation(dim, generator=gen(3))
    assert rotation.shape == (dim, dim) and rotation.dtype == torch.float64
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(dim, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(rotation, tasks.random_rotation(dim, generator=gen(3)))
    if dim > 1:
        assert not torch.equal(rotation, tasks.random_rotation(dim, generator=gen(4)))
    with pytest.raises(ValueError, match="dim"):
        tasks.random_rotation(0, generator=gen())


def test_uniform_covariates_are_von_oswalds() -> None:
    """Σ = I/12 with the uniform law is x ~ U(−½, ½)^d: range, variance 1/12, fourth moment 1/80."""
    g = torch.Generator().manual_seed(0)
    batch = tasks.sample_regression(
        20_000, 10, torch.eye(4) / 12, generator=g, covariate_law="uniform", dtype=torch.float64
    )
    x = torch.cat([batch.X.reshape(-1, 4), batch.x_query])
    assert x.abs().max() <= 0.5 and x.abs().max() > 0.499
    count = x.numel()
    assert abs((x**2).mean().item() - 1 / 12) < 5 * (x**2).std().item() / count**0.5
    assert abs((x**4).mean().item() - 1 / 80) < 5 * (x**4).std().item() / count**0.5
    torch.testing.assert_close(batch.y, (batch.X * batch.w[:, None, :]).sum(-1))
    with pytest.raises(ValueError, match="covariate_law"):
        tasks.sample_regression(2, 3, torch.eye(2), generator=g, covariate_law="laplace")


def test_random_diagonal_prompts_have_their_own_covariance() -> None:
    g = torch.Generator().manual_seed(0)
    batch, variances = tasks.sample_random_diagonal_regression(
        4000, 30, 3, generator=g, lead=(2,), scale=2.0, dtype=torch.float64
    )
    assert batch.X.shape == (2, 4000, 30, 3) and batch.x_query.shape == (2, 4000, 3) and variances.shape == (2, 4000, 3)
    # each prompt's x has its own variances: x² / λ has mean 1 over the prompt and over prompts
    standardised = torch.cat([batch.X, batch.x_query.unsqueeze(-2)], -2) ** 2 / variances.unsqueeze(-2)
    assert abs(standardised.mean().item() - 1) < 0.01
    assert abs(variances.mean().item() - 2.0) < 0.05  # scale · E Exp(1)
    assert abs((variances / 2).var().item() - 1.0) < 0.1  # Var Exp(1) = 1
    torch.testing.assert_close(batch.y, (batch.X @ batch.w.unsqueeze(-1)).squeeze(-1))
    noisy, _ = tasks.sample_random_diagonal_regression(20_000, 2, 3, generator=g, noise_std=0.5, dtype=torch.float64)
    residual = noisy.y - (noisy.X @ noisy.w.unsqueeze(-1)).squeeze(-1)
    assert abs(residual.std().item() - 0.5) < 0.01


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"scale": 0.0}, "scale"), ({"noise_std": -1.0}, "noise_std"), ({"lead": (0,)}, "lead"), ({"dim": 0}, "dim")],
)
def test_random_diagonal_bad_input(kwargs: dict, name: str) -> None:
    arguments = dict(n_prompts=4, n_context=3, dim=2) | kwargs
    with pytest.raises(ValueError, match=name):
        tasks.sample_random_diagonal_regression(**arguments, generator=torch.Generator())


def test_restrict_dimensions_zeroes_the_trailing_coordinates_and_keeps_the_noise() -> None:
    g = torch.Generator().manual_seed(2)
    batch = tasks.sample_regression(
        50, 7, torch.eye(4, dtype=torch.float64), generator=g, dtype=torch.float64, noise_std=0.3
    )
    restricted = tasks.restrict_dimensions(batch, 2)
    assert (restricted.X[..., 2:] == 0).all() and (restricted.x_query[..., 2:] == 0).all()
    torch.testing.assert_close(restricted.X[..., :2], batch.X[..., :2])
    noise = batch.y - (batch.X @ batch.w.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(restricted.y, (restricted.X @ batch.w.unsqueeze(-1)).squeeze(-1) + noise)
    query_noise = batch.y_query - (batch.x_query * batch.w).sum(-1)
    torch.testing.assert_close(restricted.y_query, (restricted.x_query * batch.w).sum(-1) + query_noise)
    torch.testing.assert_close(tasks.restrict_dimensions(batch, 4).y, batch.y)
    with pytest.raises(ValueError, match="active"):
        tasks.restrict_dimensions(batch, 5)


@pytest.mark.parametrize(
    ("law", "shape", "mean", "variance"),
    [
        ("gaussian", 0.1, 5.0, 10.0),  # ‖x‖² ~ χ²₅
        ("gamma", 0.1, 1.0, 10.0),  # G ~ Gamma(k, θ = √(10/k)): mean kθ = √(10k), variance kθ² = 10 (Ahn et al. 2024)
        ("gamma", 2.5, 5.0, 10.0),  # k = 2.5: θ = 2, G ~ χ²₅, the Gaussian's squared radius
    ],
)
def test_squared_norm_moments_of_ahn_2024_covariates(law: str, shape: float, mean: float, variance: float) -> None:
    batch = tasks.sample_regression(
        20_000, 20, torch.eye(5), generator=torch.Generator().manual_seed(3), covariate_law=law, gamma_shape=shape
    )
    squared = torch.cat([batch.X, batch.x_query.unsqueeze(1)], 1).double().pow(2).sum(-1).flatten()  # 420,000 draws
    standard_error = (variance / squared.numel()) ** 0.5
    assert abs(squared.mean().item() - mean) < 5 * standard_error
    assert abs(squared.var().item() - variance) < 0.1 * variance  # the fourth moment is heavy: a loose bar


def test_sphere_covariates_have_unit_norm_and_gamma_a_heavy_tail() -> None:
    generator = torch.Generator().manual_seed(4)
    sphere = tasks.sample_regression(2000, 20, torch.eye(5), generator=generator, covariate_law="sphere")
    torch.testing.assert_close(sphere.X.norm(dim=-1), torch.ones(2000, 20))
    norms = {}
    for law in ("gaussian", "gamma"):
        batch = tasks.sample_regression(20_000, 20, torch.eye(5), generator=generator, covariate_law=law)
        squared = batch.X.pow(2).sum(-1).flatten()[:200_000]
        norms[law] = (torch.quantile(squared, 0.99) / torch.quantile(squared, 0.5)).item()
    # χ²₅: q99/q50 = 15.09/4.35 = 3.5; Gamma(0.1): most of its mass sits near 0, so the ratio is in the thousands.
    assert 3.2 < norms["gaussian"] < 3.8 and norms["gamma"] > 100


def test_gamma_covariates_are_reproducible_and_validated() -> None:
    draw = lambda seed: tasks.sample_regression(  # noqa: E731
        10, 4, torch.eye(3), generator=torch.Generator().manual_seed(seed), covariate_law="gamma"
    )
    assert torch.equal(draw(5).X, draw(5).X) and not torch.equal(draw(5).X, draw(6).X)
    with pytest.raises(ValueError, match="gamma_shape"):
        tasks.sample_regression(
            10, 4, torch.eye(3), generator=torch.Generator(), covariate_law="gamma", gamma_shape=0.0
        )
