"""Aggregate-posterior estimators against exact mixtures and closed forms."""

import math

import pytest
import torch

from pyroib.estimators import (
    exact_log_qz,
    full_data_terms,
    log_qz_estimates,
    logsumexp_floored,
    marginal_kl,
    mmd,
    mss_log_weight_matrix,
    rate_decomposition,
    standard_normal_log_prob,
)


def gaussian_encodings(n, dim, seed, mix=None, scale=(0.3, 0.7), dtype=torch.float64):
    """Encoder locs ~ N(0, mix mix^T), scales uniform in ``scale``, one code per point."""
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(n, dim, generator=gen, dtype=dtype)
    if mix is not None:
        loc = loc @ mix.to(dtype).T
    low, high = scale
    enc_scale = low + (high - low) * torch.rand(n, dim, generator=gen, dtype=dtype)
    z = loc + enc_scale * torch.randn(n, dim, generator=gen, dtype=dtype)
    return z, loc, enc_scale, gen


def gaussian_tc(cov):
    """Closed form for z ~ N(0, cov): 1/2 (sum_i log cov_ii - log det cov)."""
    return 0.5 * (cov.diagonal().log().sum() - torch.logdet(cov)).item()


def test_mss_weight_matrix_follows_its_definition():
    n, b = 50, 6
    m = b - 1
    weights = mss_log_weight_matrix(b, n, dtype=torch.float64).exp()
    partner = (n - m) / (n * m)
    assert torch.allclose(weights.sum(1), torch.ones(b, dtype=torch.float64))
    assert torch.allclose(weights.diagonal(), torch.full((b,), 1.0 / n, dtype=torch.float64))
    off_diagonal = weights[~torch.eye(b, dtype=torch.bool)].view(b, b - 1)
    is_partner = torch.isclose(off_diagonal, torch.tensor(partner, dtype=torch.float64))
    assert is_partner.sum(1).tolist() == [1] * b
    assert torch.allclose(off_diagonal[~is_partner], torch.tensor(1.0 / m, dtype=torch.float64))
    # The widely copied version puts 1/N down column 0 instead of the diagonal.
    assert not torch.allclose(weights[:, 0], torch.tensor(1.0 / n, dtype=torch.float64))


N_SMALL, D_SMALL, B_SMALL, REPEATS = 1000, 3, 100, 20


@pytest.fixture(scope="module")
def repeated_batch_estimates():
    """Exact log q for N_SMALL independent-latent codes, and each method's estimate of it
    from REPEATS random partitions of the dataset into minibatches."""
    z, loc, scale, gen = gaussian_encodings(N_SMALL, D_SMALL, seed=0)
    exact = exact_log_qz(z, loc, scale, chunk_size=256)
    estimates = {}
    for method in ("mss", "mws"):
        joint = torch.empty(REPEATS, N_SMALL, dtype=z.dtype)
        per_dim = torch.empty(REPEATS, N_SMALL, D_SMALL, dtype=z.dtype)
        for repeat in range(REPEATS):
            for idx in torch.randperm(N_SMALL, generator=gen).split(B_SMALL):
                joint[repeat, idx], per_dim[repeat, idx] = log_qz_estimates(
                    z[idx], loc[idx], scale[idx], N_SMALL, method
                )
        estimates[method] = (joint, per_dim)
    return exact, estimates


def test_mss_estimates_the_aggregate_density_without_bias(repeated_batch_estimates):
    (exact_joint, exact_per_dim), estimates = repeated_batch_estimates
    joint, per_dim = estimates["mss"]
    # A row of MSS weights sums to one and the batch is a uniform random subset, so the
    # estimate of q(z) (not log q) has mean q(z): the ratio averages to 1 within 4 standard errors.
    for ratio in ((joint - exact_joint).exp(), (per_dim - exact_per_dim).exp()):
        standard_error = ratio.std() / math.sqrt(ratio.numel())
        assert abs(ratio.mean().item() - 1.0) < 4 * standard_error.item()


def test_mss_log_bias_is_the_jensen_gap(repeated_batch_estimates):
    (exact_joint, exact_per_dim), estimates = repeated_batch_estimates
    joint, per_dim = estimates["mss"]
    for log_ratio in (joint - exact_joint, per_dim - exact_per_dim):
        bias = log_ratio.mean().item()
        # For an unbiased estimate with relative variance v, E[log ratio] ~= -v/2 to second order;
        # v comes from the spread over the repeated partitions of the same codes.
        second_order_gap = 0.5 * log_ratio.exp().var(0).mean().item()
        standard_error = (log_ratio.std() / math.sqrt(log_ratio.numel())).item()
        assert bias < 4 * standard_error
        assert abs(bias + second_order_gap) < 0.3 * second_order_gap + 4 * standard_error


def test_total_correlation_of_independent_latents_mss_close_mws_far(repeated_batch_estimates):
    (exact_joint, exact_per_dim), estimates = repeated_batch_estimates
    exact_tc = (exact_joint - exact_per_dim.sum(-1)).mean().item()
    assert abs(exact_tc) < 0.05  # independent locs: the 1,000-point mixture is nearly factorised
    tc = {method: (joint - per_dim.sum(-1)).mean().item() for method, (joint, per_dim) in estimates.items()}
    # MSS's TC bias is the joint's Jensen gap minus the marginals' (about -0.08 nats measured here);
    # 0.15 nats is under a quarter of the smallest TC a study would call disentanglement-relevant.
    assert abs(tc["mss"] - exact_tc) < 0.15
    # MWS normalises joint and marginals alike by 1/(N B): its TC is about (D - 1) log N too high.
    assert tc["mws"] - exact_tc > 0.9 * (D_SMALL - 1) * math.log(N_SMALL)


@pytest.mark.parametrize("method", ["mss", "mws"])
def test_minibatch_rate_decomposition_identity(method):
    z, loc, scale, _ = gaussian_encodings(64, 4, seed=1)
    terms = rate_decomposition(z, loc, scale, dataset_size=5000, method=method)
    total = terms["index_code_mi"] + terms["total_correlation"] + terms["dimwise_kl"]
    assert torch.allclose(terms["rate"], total, atol=1e-10)
    assert torch.allclose(terms["marginal_kl"], terms["total_correlation"] + terms["dimwise_kl"], atol=1e-10)
    assert torch.allclose(terms["marginal_kl"], marginal_kl(z, loc, scale, 5000, method=method), atol=1e-10)
    assert terms["mi_per_dim"].shape == (4,)


def brute_force_log_qz(z, loc, scale):
    """One (Q, N, D) tensor through torch.distributions: the reference for the chunked code."""
    per_dim = torch.distributions.Normal(loc.unsqueeze(0), scale.unsqueeze(0)).log_prob(z.unsqueeze(1))
    log_n = math.log(loc.shape[0])
    return torch.logsumexp(per_dim.sum(-1), 1) - log_n, torch.logsumexp(per_dim, 1) - log_n


def test_chunked_mixture_matches_one_unchunked_tensor():
    z, loc, scale, _ = gaussian_encodings(300, 3, seed=2)
    queries = torch.cat([z, 3.0 * torch.randn(50, 3, dtype=z.dtype)])  # includes far-off codes
    joint, per_dim = exact_log_qz(queries, loc, scale, chunk_size=37)
    ref_joint, ref_per_dim = brute_force_log_qz(queries, loc, scale)
    assert torch.allclose(joint, ref_joint, atol=1e-10)
    assert torch.allclose(per_dim, ref_per_dim, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [37, 301, 1000])
def test_leaving_each_query_s_own_component_out_matches_the_other_components_alone(chunk_size):
    z, loc, scale, _ = gaussian_encodings(301, 3, seed=4)  # 301 = 8 · 37 + 5: a last block of five, and of one
    joint, per_dim = exact_log_qz(z, loc, scale, chunk_size=chunk_size, exclude_self=True)
    for n in (0, 36, 37, 150, 300):
        others = torch.cat([torch.arange(n), torch.arange(n + 1, 301)])
        ref_joint, ref_per_dim = brute_force_log_qz(z[n : n + 1], loc[others], scale[others])
        assert torch.allclose(joint[n], ref_joint[0], atol=1e-10)
        assert torch.allclose(per_dim[n], ref_per_dim[0], atol=1e-10)
    with pytest.raises(ValueError, match="one query per component"):
        exact_log_qz(z[:10], loc, scale, exclude_self=True)


def test_full_data_terms_identity_and_rate():
    _, loc, scale, gen = gaussian_encodings(300, 3, seed=3)
    terms = full_data_terms(loc, scale, n_samples_per_point=8, chunk_size=64, generator=gen)
    total = terms["index_code_mi"] + terms["total_correlation"] + terms["dimwise_kl"]
    assert torch.allclose(terms["rate"], total, atol=1e-12)
    assert torch.allclose(terms["marginal_kl"], terms["total_correlation"] + terms["dimwise_kl"], atol=1e-12)
    # The rate is a Monte Carlo estimate of the mean closed-form KL(q(z|x) || N(0, I)); with
    # 2,400 codes its standard error is 0.035 nats (measured), so 0.16 is 4.5 of them.
    kl = 0.5 * (loc.square() + scale.square() - 1.0 - 2.0 * scale.log()).sum(-1).mean().item()
    assert abs(terms["rate"].item() - kl) < 0.16


def test_full_data_total_correlation_of_correlated_gaussian():
    # Encoders N(mu_n, s^2 I) with mu ~ N(0, Sigma): as N grows the aggregate tends to
    # N(0, Sigma + s^2 I), whose TC is closed-form (0.51 nats here).
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.3, -0.5, 0.8]])
    s = 0.3
    _, loc, _, gen = gaussian_encodings(2000, 3, seed=4, mix=mix, dtype=torch.float32)
    terms = full_data_terms(loc, torch.full_like(loc, s), generator=gen)
    truth = gaussian_tc(mix @ mix.T + s**2 * torch.eye(3))
    # Over 8 seeds the error had mean +0.03 (the 2,000-point mixture is a kernel density
    # estimate, biased upwards) and sd 0.015 (sampling of the locs): 0.08 is mean + 3 sd.
    assert abs(terms["total_correlation"].item() - truth) < 0.08


@pytest.mark.parametrize("sigma", [0.3, 0.5])
def test_per_dimension_mi_is_minus_log_sigma(sigma):
    # q(z|x) = N(mu(x), sigma^2) with mu ~ N(0, 1 - sigma^2) makes the aggregate N(0, 1).
    gen = torch.Generator().manual_seed(5)
    loc = math.sqrt(1.0 - sigma**2) * torch.randn(2000, 2, generator=gen)
    terms = full_data_terms(loc, torch.full_like(loc, sigma), n_samples_per_point=4, generator=gen)
    # Over 8 seeds the per-dimension error stayed within 0.035 nats; both dimensions must pass.
    assert torch.allclose(terms["mi_per_dim"], torch.full((2,), -math.log(sigma)), atol=0.06)
    assert abs(terms["total_correlation"].item()) < 0.03
    assert abs(terms["dimwise_kl"].item()) < 0.03


def test_index_code_mi_never_exceeds_log_of_mixture_size():
    n, b = 500, 32
    _, loc, _, gen = gaussian_encodings(n, 2, seed=6)
    tiny = torch.full_like(loc, 1e-4)  # well-separated encoders: MI approaches log N from below
    terms = full_data_terms(loc, tiny, generator=gen)
    assert math.log(n) - 1e-3 < terms["index_code_mi"].item() <= math.log(n) + 1e-9
    assert (terms["mi_per_dim"] <= math.log(n) + 1e-9).all()
    z = loc[:b] + tiny[:b] * torch.randn(b, 2, generator=gen, dtype=loc.dtype)
    mss = rate_decomposition(z, loc[:b], tiny[:b], n, method="mss")
    assert math.log(n) - 1e-3 < mss["index_code_mi"].item() <= math.log(n) + 1e-9
    # MWS gives its own component weight 1/(N B), so its bound is log(N B), reached here.
    mws = rate_decomposition(z, loc[:b], tiny[:b], n, method="mws")
    assert math.log(n * b) - 1e-3 < mws["index_code_mi"].item() <= math.log(n * b) + 1e-9


def test_joint_prior_is_accepted_where_it_can_be():
    z, loc, scale, gen = gaussian_encodings(16, 3, seed=7)

    def joint_standard_normal(codes):
        return standard_normal_log_prob(codes).sum(-1)

    per_dim = marginal_kl(z, loc, scale, 100)
    assert torch.allclose(marginal_kl(z, loc, scale, 100, prior_log_prob=joint_standard_normal), per_dim)
    terms = full_data_terms(loc, scale, prior_log_prob=joint_standard_normal, generator=gen)
    assert "dimwise_kl" not in terms
    assert torch.allclose(terms["marginal_kl"] + terms["index_code_mi"], terms["rate"])
    with pytest.raises(ValueError, match="per-dimension prior"):
        rate_decomposition(z, loc, scale, 100, prior_log_prob=joint_standard_normal)


def test_minibatch_terms_are_differentiable():
    z, loc, scale, _ = gaussian_encodings(32, 4, seed=8)
    loc.requires_grad_(True)
    terms = rate_decomposition(loc + scale * (z - loc).detach() / scale, loc, scale, 1000)
    terms["total_correlation"].backward()
    assert torch.isfinite(loc.grad).all() and loc.grad.abs().sum() > 0


def rbf_mmd_between_unit_gaussians(shift, dim, bandwidth):
    """MMD^2 of N(0, I) and N(shift, I) under exp(-|a - b|^2 / c): E k over a - b ~ N(m, 2I)
    is (1 + 4/c)^(-D/2) exp(-|m|^2 / (c + 4))."""
    base = (1.0 + 4.0 / bandwidth) ** (-dim / 2)
    return 2.0 * base * (1.0 - math.exp(-(shift**2) / (bandwidth + 4.0)))


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_of_identical_distributions_is_zero_and_grows_with_shift(kernel):
    gen = torch.Generator().manual_seed(9)
    dim, n, pairs = 4, 200, 30
    x = torch.randn(pairs, n, dim, generator=gen, dtype=torch.float64)
    y = torch.randn(pairs, n, dim, generator=gen, dtype=torch.float64)
    direction = torch.zeros(dim, dtype=torch.float64)
    direction[0] = 1.0
    readings = {
        shift: torch.stack([mmd(x[i], y[i] + shift * direction, kernel=kernel) for i in range(pairs)])
        for shift in (0.0, 0.5, 1.0, 2.0)
    }
    null = readings[0.0]
    assert abs(null.mean().item()) < 4 * null.std().item() / math.sqrt(pairs)
    means = [readings[shift].mean().item() for shift in (0.0, 0.5, 1.0, 2.0)]
    assert means == sorted(means) and means[1] > 4 * null.std().item()
    if kernel == "rbf":
        for shift in (0.5, 1.0, 2.0):
            expected = rbf_mmd_between_unit_gaussians(shift, dim, bandwidth=2.0 * dim)
            spread = readings[shift].std().item() / math.sqrt(pairs)
            assert abs(means[[0.0, 0.5, 1.0, 2.0].index(shift)] - expected) < 4 * spread


def test_biased_mmd_has_its_known_positive_offset():
    # For identical P = Q = N(0, I) the V-statistic has mean (k(0) - E k(x, x'))(1/n + 1/m).
    gen = torch.Generator().manual_seed(10)
    dim, n, pairs = 3, 100, 40
    readings = torch.stack(
        [
            mmd(
                torch.randn(n, dim, generator=gen, dtype=torch.float64),
                torch.randn(n, dim, generator=gen, dtype=torch.float64),
                unbiased=False,
            )
            for _ in range(pairs)
        ]
    )
    expected = (1.0 - (1.0 + 4.0 / (2.0 * dim)) ** (-dim / 2)) * 2.0 / n
    assert (readings >= 0).all()
    assert abs(readings.mean().item() - expected) < 4 * readings.std().item() / math.sqrt(pairs)


def test_mmd_options_and_gradient_at_coincident_points():
    x = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    value = mmd(x, x.detach().clone(), kernel="imq", scale=(0.5, 1.0, 2.0), unbiased=False)
    value.backward()
    assert abs(value.item()) < 1e-10 and torch.isfinite(x.grad).all()
    single = mmd(x.detach(), x.detach() + 1.0, scale=1.0)
    summed = sum(mmd(x.detach(), x.detach() + 1.0, scale=c) for c in (1.0, 2.0))
    assert torch.allclose(mmd(x.detach(), x.detach() + 1.0, scale=[1.0, 2.0]), summed)
    assert single > 0


def _codes(b=8, d=3):
    z = torch.randn(b, d)
    return z, z.clone(), torch.ones(b, d)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: log_qz_estimates(*_codes(1), 100, "mss"), "at least 2"),
        (lambda: log_qz_estimates(*_codes(8), 5, "mss"), "smaller than the batch"),
        (lambda: log_qz_estimates(*_codes(8), 100, "exact"), "unknown method"),
        (lambda: log_qz_estimates(torch.randn(8), torch.randn(8), torch.ones(8), 100), "shape"),
        (lambda: log_qz_estimates(torch.randn(8, 3), torch.randn(8, 2), torch.ones(8, 3), 100), "share the shape"),
        (lambda: rate_decomposition(*_codes(), 100, prior_log_prob=lambda z: z[:, :1]), "prior log density"),
        (lambda: full_data_terms(torch.zeros(5, 2), torch.zeros(5, 2)), "strictly positive"),
        (lambda: full_data_terms(torch.zeros(5, 2), torch.ones(5, 2), n_samples_per_point=0), "n_samples_per_point"),
        (lambda: exact_log_qz(torch.randn(4, 3), torch.zeros(5, 2), torch.ones(5, 2)), "num_codes"),
        (lambda: exact_log_qz(torch.randn(4, 2), torch.zeros(5, 2), torch.ones(5, 2), chunk_size=0), "chunk_size"),
        (lambda: mmd(torch.randn(5, 2), torch.randn(5, 2), kernel="laplace"), "unknown kernel"),
        (lambda: mmd(torch.randn(5, 2), torch.randn(5, 3)), "same D"),
        (lambda: mmd(torch.randn(1, 2), torch.randn(5, 2)), "at least 2"),
        (lambda: mmd(torch.randn(5, 2), torch.randn(5, 2), scale=0.0), "positive"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bad_types_raise_type_error():
    z, loc, scale = _codes()
    with pytest.raises(TypeError, match="dataset_size must be a whole number"):
        log_qz_estimates(z, loc, scale, 100.0)
    with pytest.raises(TypeError, match="floating-point"):
        log_qz_estimates(z.long(), loc, scale, 100)


def test_fused_mixture_density_gradients_match_autograd_of_the_definition():
    """The hand-written backward of log_qz_estimates against autograd through the plain formula (float64)."""
    torch.manual_seed(3)
    b, d, n = 7, 3, 50
    loc = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(b, d, dtype=torch.float64) + 0.3).requires_grad_()
    z = (loc.detach() + scale.detach() * torch.randn(b, d, dtype=torch.float64)).requires_grad_()
    for method in ("mss", "mws"):
        joint, per_dim = log_qz_estimates(z, loc, scale, n, method)
        pairwise = torch.distributions.Normal(loc.unsqueeze(0), scale.unsqueeze(0)).log_prob(z.unsqueeze(1))
        log_w = (
            mss_log_weight_matrix(b, n, dtype=torch.float64)
            if method == "mss"
            else torch.full((b, b), -math.log(n * b), dtype=torch.float64)
        )
        ref_joint = torch.logsumexp(log_w + pairwise.sum(-1), 1)
        ref_per_dim = torch.logsumexp(log_w.unsqueeze(-1) + pairwise, 1)
        weights = torch.randn(b, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)
        ours = torch.autograd.grad((joint * weights[0]).sum() + (per_dim * weights[1]).sum(), (z, loc, scale))
        ref = torch.autograd.grad((ref_joint * weights[0]).sum() + (ref_per_dim * weights[1]).sum(), (z, loc, scale))
        assert torch.allclose(joint, ref_joint) and torch.allclose(per_dim, ref_per_dim)
        for a, r in zip(ours, ref):
            assert torch.allclose(a, r, atol=1e-10)


def test_fused_mixture_density_is_accurate_in_float32_far_from_every_component():
    """Codes far from all components and scales spanning 1e-4..10 in one dimension: no underflow to -inf, no
    overflow, values and gradients as the float64 definition (the forward shifts by the exact maximum)."""
    torch.manual_seed(4)
    b, d, n = 32, 4, 1000
    loc = torch.randn(b, d, dtype=torch.float64)
    scale = torch.exp(torch.empty(b, d, dtype=torch.float64).uniform_(math.log(1e-4), math.log(10.0)))
    z = loc + scale * torch.randn(b, d, dtype=torch.float64)
    z[: b // 2, 0] += 40.0  # hundreds of nats from every component in dimension 0
    tensors64 = [t.clone().requires_grad_() for t in (z, loc, scale)]
    tensors32 = [t.float().requires_grad_() for t in (z, loc, scale)]
    ref = log_qz_estimates(*tensors64, n)
    ours = log_qz_estimates(*tensors32, n)
    for a, r in zip(ours, ref):
        assert torch.isfinite(a).all()
        assert torch.allclose(a.double(), r, rtol=1e-5, atol=1e-3)
    probe = torch.randn(b, d, dtype=torch.float64)
    grads64 = torch.autograd.grad(ref[0].sum() + (ref[1] * probe).sum(), tensors64)
    grads32 = torch.autograd.grad(ours[0].sum() + (ours[1] * probe.float()).sum(), tensors32)
    for a, r in zip(grads32, grads64):
        assert torch.isfinite(a).all()
        assert torch.allclose(a.double(), r, rtol=1e-3, atol=1e-3 * r.abs().max().item())


def test_floored_logsumexp_matches_torch_within_its_bound():
    torch.manual_seed(5)
    x = torch.randn(6, 3, 200, dtype=torch.float64) * 300.0 - 500.0
    x[0, 0, 5] = 80.0  # one term far above the rest of its row
    ours = logsumexp_floored(x, -1)
    assert torch.allclose(ours, torch.logsumexp(x, -1), rtol=0.0, atol=200 * math.exp(-60.0) + 1e-12)
    assert torch.allclose(logsumexp_floored(x, 1), torch.logsumexp(x, 1), atol=1e-12)


def test_numpy_integer_sizes_are_accepted_like_ints():
    import numpy as np

    gen = torch.Generator().manual_seed(3)
    loc, scale = torch.randn(16, 3, generator=gen), torch.rand(16, 3, generator=gen) + 0.5
    z = loc + scale * torch.randn(16, 3, generator=gen)
    assert torch.equal(marginal_kl(z, loc, scale, np.int64(1000)), marginal_kl(z, loc, scale, 1000))
    assert torch.equal(
        full_data_terms(
            loc, scale, n_samples_per_point=np.int64(2), chunk_size=np.int32(8), generator=gen.manual_seed(1)
        )["rate"],
        full_data_terms(loc, scale, n_samples_per_point=2, chunk_size=8, generator=gen.manual_seed(1))["rate"],
    )


def test_a_second_backward_through_the_fused_mixture_says_why_it_is_refused():
    gen = torch.Generator().manual_seed(4)
    loc = torch.randn(8, 2, generator=gen, requires_grad=True)
    scale = (torch.rand(8, 2, generator=gen) + 0.5).requires_grad_()
    z = loc + scale * torch.randn(8, 2, generator=gen)
    tc = rate_decomposition(z, loc, scale, 100)["total_correlation"]
    tc.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="serves one backward"):
        tc.backward()


def test_large_numpy_sizes_do_not_overflow():
    import numpy as np

    z, loc, scale = _codes()
    exact = marginal_kl(z, loc, scale, 50_000_000, method="mws")
    assert torch.equal(marginal_kl(z, loc, scale, np.int32(50_000_000), method="mws"), exact)
