"""Score errors and sample distances (science.md §2).

Score errors compare an estimate s_hat with the exact score s on fresh points x ~ q_t:

* L2 error          E ||s_hat_t(x) - s_t(x)||^2, also relative to E ||s_t(x)||^2;
* quantile error    D^delta_{q_t}(s_hat, s) = inf{eps : P[||s_hat_t(x) - s_t(x)|| > eps] <= delta},
                    the (1 - delta) quantile of ||s_hat_t(x) - s_t(x)|| (Gupta et al. 2023).

Sample distances take two point clouds ``x (m, d)`` and ``y (m', d)``. Randomness (projection
directions) comes from a passed generator. ``SAMPLE_METRICS`` (a :class:`dsclab.registry.Registry`,
entry-point group ``dsclab.metrics``) holds them with one signature, ``(x, y, generator) -> float``,
each declaring its ``long_name`` and ``units`` beside it (:func:`dsclab.registry.declare`) and
optionally ``against`` (:func:`against`: what depends on ``y`` alone computed once for many x), and
:data:`SCORE_ERRORS` the long names and units of the score errors. A store variable of either is
built from these (``dsclab.layout.score_error_variables``, ``dsclab.layout.sample_metric_variables``):
a kind lists only what is its own.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from dsclab.lazy import deferred
from dsclab.registry import Needs, Registry, declare, nonempty_text, text

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)


def score_errors(score_hat: Callable, dist, ts: Sequence[float], m: int, deltas: Sequence[float],
                 generator: torch.Generator | Callable[[float], torch.Generator],
                 dtype: torch.dtype | None = None) -> dict[str, np.ndarray]:
    """L2, relative L2 and quantile score errors on a grid of times (``score_hat`` is called on
    ``dtype`` inputs, float32 when None).

    The m points at time t come from ``generator(t)`` when ``generator`` is a callable (each t its
    own draws: a value does not depend on the rest of the grid, so a store grows along t), else
    from the one generator, time after time. Returns ``l2 (T,)``, ``l2_rel (T,)`` and
    ``quantile (T, D)`` for ``ts`` and ``deltas``.
    """
    dtype = torch.float32 if dtype is None else dtype
    l2, rel, qs = [], [], []
    for t in ts:
        g = generator(t) if callable(generator) else generator
        x = dist.sample(m, g, t=float(t))
        s = dist.score(x, float(t))
        with torch.no_grad():
            sh = score_hat(x.to(dtype), float(t)).to(torch.float64)
        err = ((sh - s) ** 2).sum(dim=1)
        l2.append(err.mean().item())
        rel.append(err.mean().item() / (s ** 2).sum(dim=1).mean().item())
        qs.append(quantile_error(err.sqrt(), deltas))
    return {"l2": np.array(l2), "l2_rel": np.array(rel), "quantile": np.array(qs)}


SCORE_ERRORS: dict[str, tuple[str, str]] = {
    "score_l2": ("L2 score error E||s_hat - s||^2 on fresh x ~ q_t", "1"),
    "score_l2_rel": ("relative L2 score error E||s_hat - s||^2 / E||s||^2", "1"),
    "score_quantile": ("(1 - delta)-quantile of ||s_hat - s||", "1"),
}
"""Long name and units of each score error of :func:`score_errors` (``l2``, ``l2_rel``, ``quantile``)
as a store variable, by the variable's name."""


def quantile_error(norms: torch.Tensor | np.ndarray, deltas: Sequence[float]) -> np.ndarray:
    """(1 - delta) quantiles of the error norms ||s_hat - s||, one per delta.

    The empirical version of inf{eps : P[norm > eps] <= delta}: the smallest observed value v with
    #{norm > v} <= delta * m, i.e. the order statistic of rank ceil((1 - delta) m).
    """
    v = np.sort(np.asarray(norms, dtype=np.float64).ravel())
    m = v.size
    out = []
    for delta in deltas:
        k = int(np.ceil((1.0 - delta) * m - 1e-9))  # rank (1-based) of the quantile
        out.append(v[min(max(k, 1), m) - 1])
    return np.array(out)


class SlicedW2:
    """Sliced 2-Wasserstein distance to a fixed cloud ``y (m', d)`` along fixed directions:
    ``n_proj`` unit directions theta drawn from ``generator`` (float64 normals, normalised) and
    the sorted projections of ``y`` are computed once; calling it on ``x (m, d)`` gives

        SW2(x, y) = sqrt( mean over theta and quantiles of (x_(i) . theta - y_(i) . theta)^2 ),

    the root mean over the directions of the 1-D squared W2 between the projections (quantile
    coupling of the sorted projections). Clouds of different sizes m != m' are coupled exactly
    by their quantile functions (:func:`w2_1d_squared`): the empirical 1-D W2 is
    int_0^1 (F_x^{-1}(u) - F_y^{-1}(u))^2 du, and both quantile functions are constant between the
    breakpoints {i/m} and {j/m'}. One object scores many clouds against one target with the same
    directions (common random numbers)."""

    def __init__(self, y: torch.Tensor, generator: torch.Generator, n_proj: int = 256):
        y = y.to(torch.float64)
        th = torch.randn(y.shape[1], n_proj, generator=generator, dtype=torch.float64, device=generator.device)
        self.theta = (th / th.norm(dim=0, keepdim=True)).to(y.device)  # drawn on the generator's device
        self.sorted_y, _ = torch.sort(y @ self.theta, dim=0)

    def __call__(self, x: torch.Tensor) -> float:
        px, _ = torch.sort(x.to(torch.float64) @ self.theta, dim=0)
        return float(w2_1d_squared(px, self.sorted_y).mean().sqrt())


def w2_1d_squared(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Squared 1-D W2 between the empirical measures of the columns of sorted ``px (m, P)`` and
    ``py (m', P)``, one per column (P,): int_0^1 (F_x^{-1}(u) - F_y^{-1}(u))^2 du, exact.

    F_x^{-1} equals px[i] on ((i)/m, (i+1)/m]; in units of 1/(m m') the breakpoints of both
    quantile functions are the integers {i m'} and {j m}. On the piece [a, b) of their sorted union
    x's index is a // m' and y's a // m, and the piece weighs (b - a) / (m m'). Equal sizes reduce to
    the mean of (px - py)^2."""
    m, mp = px.shape[0], py.shape[0]
    if m == mp:
        return ((px - py) ** 2).mean(0)
    cuts = np.union1d(np.arange(m) * mp, np.arange(mp) * m)  # starts of the pieces, 0 included
    w = np.diff(np.append(cuts, m * mp)) / (m * mp)
    ix, iy = (torch.as_tensor(cuts // k, device=px.device) for k in (mp, m))
    wt = torch.as_tensor(w, dtype=torch.float64, device=px.device)
    return (wt[:, None] * (px[ix] - py[iy]) ** 2).sum(0)


def sliced_w2(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, n_proj: int = 256) -> float:
    """Sliced 2-Wasserstein distance between ``x`` and ``y`` along ``n_proj`` random unit
    directions drawn from ``generator`` (:class:`SlicedW2`)."""
    return SlicedW2(y, generator, n_proj)(x)


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T).clamp_min(0.0)


class MMD:
    """RBF-kernel MMD to a fixed cloud ``y (m', d)``: the bandwidth (default: the median distance
    over the distinct pairs of ``y``) and the mean kernel of ``y`` with itself are computed once;
    calling it on ``x`` gives :func:`mmd` ``(x, y, bandwidth)``, the same float operations in the
    same order (one object scores many clouds against one target: a cell's samplers and floor)."""

    def __init__(self, y: torch.Tensor, bandwidth: float | None = None):
        self.y = y.to(torch.float64)
        if bandwidth is None:
            iu = torch.triu_indices(self.y.shape[0], self.y.shape[0], offset=1, device=self.y.device)
            bandwidth = float(_sqdist(self.y, self.y)[iu[0], iu[1]].median().sqrt())
        self.bandwidth = bandwidth
        self.kyy = self._k(self.y, self.y).mean()

    def _k(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-_sqdist(a, b) / (2 * self.bandwidth ** 2))

    def __call__(self, x: torch.Tensor) -> float:
        x = x.to(torch.float64)
        val = self._k(x, x).mean() + self.kyy - 2 * self._k(x, self.y).mean()
        return float(val.clamp_min(0.0).sqrt())


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """RBF-kernel MMD (biased V-statistic, square-rooted): with k(a, b) = exp(-|a - b|^2 / (2 h^2)),

        MMD_V^2 = mean_{i,i'} k(x_i, x_i') + mean_{j,j'} k(y_j, y_j') - 2 mean_{i,j} k(x_i, y_j).

    ``bandwidth`` h defaults to the median distance over the distinct pairs i < j of ``y`` (the
    lower middle value for an even count; the diagonal, whose computed squared distances are
    rounding noise of either sign, never enters). Its bias (the diagonal terms k = 1) gives a
    positive floor even when x and y share a law: compare with :func:`mmd` of two independent
    draws of the target (``mmd_floor``). :class:`MMD` scores many clouds against one ``y``."""
    return MMD(y, bandwidth)(x)


def w2_exact(x: torch.Tensor, y: torch.Tensor, max_points: int = 2000) -> float:
    """Exact 2-Wasserstein distance between the empirical measures (optimal transport on the
    squared Euclidean costs, built in float64). Refuses more than ``max_points`` points.

    Equal sizes m = m' are an assignment problem: an optimal plan of uniform weights 1/m is a
    permutation (Birkhoff), so W2^2 = min over permutations sigma of (1/m) sum_i C[i, sigma(i)],
    solved by SciPy's shortest-augmenting-path ``linear_sum_assignment`` on the cost reduced by its
    row then column minima (the same optimal permutations: a constant per row or column shifts every
    permutation's total alike; the reduction starts the solver's duals near the optimum, 2-4x faster
    at d >= 8, ``benchmarks/w2_solvers.py``), and the sum taken over the original costs. The
    optimum is unique even where the permutation is not, so this equals the network simplex
    (``ot.emd2``, which unequal sizes still use) up to float rounding: each reduced cost is off by
    at most about 2 eps max C, so the permutation found is optimal to within 4 eps max C in W2^2
    (relative: 4 eps max C / W2^2, about 1e-14 for the quick study's clouds), beside the summation
    order (``tests/test_metrics.py`` checks 1e-12 against ``ot.emd2``, ties included, and brute
    force on tiny instances)."""
    m, mp = x.shape[0], y.shape[0]
    if max(m, mp) > max_points:
        raise ValueError(f"w2_exact: at most {max_points} points (got {m} and {mp})")
    cost = _sqdist(x.to(torch.float64), y.to(torch.float64)).cpu().numpy()
    if m == mp:
        from scipy.optimize import linear_sum_assignment

        reduced = cost - cost.min(axis=1, keepdims=True)
        reduced -= reduced.min(axis=0, keepdims=True)
        rows, cols = linear_sum_assignment(reduced)
        w2sq = float(cost[rows, cols].sum() / m)
    else:
        import ot

        a, b = np.full(m, 1.0 / m), np.full(mp, 1.0 / mp)
        w2sq = float(ot.emd2(a, b, cost, numItermax=10_000_000))
    return float(np.sqrt(max(w2sq, 0.0)))


def gaussian_kl(m1, C1, m2, C2) -> float:
    """KL(N(m1, C1) || N(m2, C2)) in nats, float64.

    Computed from the eigenvalues lam of L2^{-1} C1 L2^{-T} (C2 = L2 L2^T) as
    1/2 sum(x - log1p(x)) + 1/2 ||L2^{-1}(m1 - m2)||^2 with x = lam - 1, which stays accurate when
    the KL is tiny (the discretisation errors of good samplers reach 1e-8)."""
    m1, m2 = (torch.as_tensor(v, dtype=torch.float64) for v in (m1, m2))
    C1, C2 = (torch.as_tensor(v, dtype=torch.float64) for v in (C1, C2))
    L2 = torch.linalg.cholesky(0.5 * (C2 + C2.T))
    A = torch.linalg.solve_triangular(L2, C1, upper=False)
    A = torch.linalg.solve_triangular(L2, A.T, upper=False)  # L2^{-1} C1 L2^{-T}
    lam = torch.linalg.eigvalsh(0.5 * (A + A.T))
    if (lam <= 0).any():
        return float("inf")
    x = lam - 1.0
    u = torch.linalg.solve_triangular(L2, (m1 - m2)[:, None], upper=False)[:, 0]
    return float(0.5 * (x - torch.log1p(x)).sum() + 0.5 * (u * u).sum())


def gaussian_fit_kl(x: torch.Tensor, y: torch.Tensor) -> float:
    """KL between the Gaussian fits (mean, covariance) of samples x and y: KL(N_x || N_y)."""
    def fit(v):
        v = v.to(torch.float64)
        mu = v.mean(0)
        c = torch.cov(v.T).reshape(v.shape[1], v.shape[1])
        return mu, c
    return gaussian_kl(*fit(x), *fit(y))


@declare(long_name="sliced W2 distance", units="1", against=lambda y, generator: SlicedW2(y, generator))
def _sliced_w2(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> float:
    """:func:`sliced_w2` with the metric signature (256 directions)."""
    return sliced_w2(x, y, generator)


@declare(long_name="RBF MMD", units="1", against=lambda y, generator: MMD(y))
def _mmd(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> float:
    """:func:`mmd` with the metric signature (bandwidth: the median distance of y)."""
    return mmd(x, y)


@declare(long_name="exact W2 distance", units="1")
def _w2(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> float:
    """:func:`w2_exact` (optimal transport) with the metric signature."""
    return w2_exact(x, y)


@declare(long_name="KL of Gaussian fits", units="nats")
def _kl_gauss(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> float:
    """:func:`gaussian_fit_kl`, KL(N_fit(x) || N_fit(y)), with the metric signature."""
    return gaussian_fit_kl(x, y)


SAMPLE_METRICS: Registry[Callable] = Registry(
    "dsclab.metrics", "metric",
    check=Needs("metric", long_name=(nonempty_text, "a non-empty string"),
                units=(text, "a string (CF units, '1' for a pure number)")),
    builtins={"sliced_w2": _sliced_w2, "mmd": _mmd, "w2": _w2, "kl_gauss": _kl_gauss})


def against(metric: Callable, y: torch.Tensor, generator: Callable[[], torch.Generator]) -> Callable[[torch.Tensor], float]:
    """``metric`` (of :data:`SAMPLE_METRICS`' signature) against the fixed cloud ``y``, as a
    callable on ``x``: what does not depend on ``x`` is computed once where the metric declares
    ``against`` (``metric.against(y, g)``: a callable on x giving ``metric(x, y, g')`` for every
    g' in g's state, bit for bit; it may draw from g only when it is built), so a cell's calls
    against one target share it (sliced W2's directions and sorted target projections, MMD's
    bandwidth and target kernel). ``generator()`` gives a fresh generator in the same state at
    each call: once for a metric that declares ``against``, else once per evaluation."""
    prepare = getattr(metric, "against", None)
    if prepare is not None:
        return prepare(y, generator())
    return lambda x: metric(x, y, generator())


# ------------------------------------------------------------------------------------------
# Metrics that need no exact score (real data; science.md §7)
# ------------------------------------------------------------------------------------------


def nearest_two(x: torch.Tensor, ref: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distances from each row of ``x (m, d)`` to its nearest and second-nearest rows of
    ``ref (n, d)`` (n >= 2), and the index of the nearest: ``(r1, r2, i1)``, each ``(m,)``, float64.
    Brute force in chunks of ``chunk`` rows of x; exact distances (``torch.cdist`` on float64,
    the direct formula, no matrix-product shortcut)."""
    x, ref = x.to(torch.float64), ref.to(x.device, torch.float64)
    if ref.shape[0] < 2:
        raise ValueError("need at least two reference rows")
    r1, r2, i1 = [], [], []
    for s in range(0, x.shape[0], chunk):
        dist = torch.cdist(x[s:s + chunk], ref, compute_mode="donot_use_mm_for_euclid_dist")
        v, i = torch.topk(dist, 2, dim=1, largest=False)
        r1.append(v[:, 0]), r2.append(v[:, 1]), i1.append(i[:, 0])
    return torch.cat(r1), torch.cat(r2), torch.cat(i1)


MEMORIZATION_RATIO = 1.0 / 3.0
"""Gu et al. (2023): a sample is memorized when its nearest training row is closer than a third of
the distance to the second nearest."""


def memorized(x: torch.Tensor, train: torch.Tensor, ratio: float = MEMORIZATION_RATIO) -> torch.Tensor:
    """Per row of ``x``, whether it is memorized from ``train`` (Gu et al. 2023, "On Memorization in
    Diffusion Models"): ||x - NN_1(x)|| < ratio ||x - NN_2(x)||, NN_k the k-th nearest row of
    ``train`` (bool ``(m,)``). An exact copy of a training row (r1 = 0 < r2 / 3) is memorized."""
    r1, r2, _ = nearest_two(x, train)
    return r1 < ratio * r2


def memorization_fraction(x: torch.Tensor, train: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """The fraction of rows of ``x`` memorized from ``train`` (:func:`memorized`)."""
    return float(memorized(x, train).double().mean())


def cosine(a: torch.Tensor, b: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise cosine similarity of ``a`` and ``b`` (each ``(m, d)``), both first centred by
    ``centre (d,)`` when given (the training part's mean: uncentred, two images sharing a
    background are similar whatever they show). A zero row has similarity 0."""
    a, b = a.to(torch.float64), b.to(a.device, torch.float64)
    if centre is not None:
        c = torch.as_tensor(centre, dtype=torch.float64, device=a.device)
        a, b = a - c, b - c
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))


def paired_similarity(a: torch.Tensor, b: torch.Tensor, centre: torch.Tensor | None = None) -> float:
    """Mean cosine similarity of paired rows (Kadkhodaie et al. 2024: two networks' samples from the
    same initial noise and Brownian path); 1 for identical samples."""
    return float(cosine(a, b, centre).mean())


def nearest_similarity(x: torch.Tensor, train: torch.Tensor, centre: torch.Tensor | None = None) -> float:
    """Mean over the rows of ``x`` of the cosine similarity to their nearest (Euclidean) row of ``train``."""
    _, _, i1 = nearest_two(x, train) if train.shape[0] >= 2 else (None, None, torch.zeros(x.shape[0], dtype=torch.long))
    return float(cosine(x, train.to(x.device)[i1], centre).mean())


def heldout_dsm(score_hat: Callable, x: torch.Tensor, t: float, generator: torch.Generator,
                dtype: torch.dtype | None = None) -> float:
    """The DSM loss of a score on held-out rows ``x (m, d)`` at time t, per dimension:
    mean_i sigma_t^2 ||s_hat(x_t, t) + z_i / sigma_t||^2 / d with x_t = e^{-t} x_i + sigma_t z_i,
    z from ``generator`` (the same generator gives the same z for every model: paired differences).
    Its minimum over scores is the held-out law's denoising error, not 0. ``score_hat`` is called
    on ``dtype`` inputs, float32 when None."""
    from dsclab import noise

    dtype = torch.float32 if dtype is None else dtype
    x = x.to(torch.float64)
    z = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    tt = torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)
    sig = noise.sigma(tt)[:, None]
    xt = noise.mean_coef(tt)[:, None] * x + sig * z
    with torch.no_grad():
        s = score_hat(xt.to(dtype), float(t)).to(torch.float64)
    return float(((sig * s + z) ** 2).sum(1).mean() / x.shape[1])


@declare(long_name="fraction of samples memorized (nearest training row closer than 1/3 of the second nearest)",
         units="1")
def _memorized(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> float:
    """:func:`memorization_fraction` of ``x`` against the rows ``y`` (Gu et al. 2023)."""
    return memorization_fraction(x, y)


@declare(long_name="mean cosine similarity (centred) to the nearest training row", units="1")
def _nearest_similarity(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> float:
    """:func:`nearest_similarity` of ``x`` to the rows ``y``, centred by the mean of ``y``."""
    return nearest_similarity(x, y, y.to(torch.float64).mean(0))


ROW_METRICS: Registry[Callable] = Registry(
    "dsclab.row_metrics", "row metric",
    check=Needs("row metric", long_name=(nonempty_text, "a non-empty string"),
                units=(text, "a string (CF units, '1' for a pure number)")),
    builtins={"memorized": _memorized, "nearest_similarity": _nearest_similarity})
"""Metrics of generated samples against the rows they were trained on (no exact law needed), with
the signature of :data:`SAMPLE_METRICS`, ``(samples, rows, generator) -> float`` (entry-point
group ``dsclab.row_metrics``)."""


HELD_OUT: dict[str, tuple[str, str]] = {
    "dsm_heldout": ("held-out DSM loss E sigma_t^2 ||s_hat(x_t) + z / sigma_t||^2 / d on the test part "
                    "(the same z for every n)", "1"),
    "nll_bpd": ("I-MMSE estimate of -log p(x) of the trained model on the test part (discrete estimator on "
                "lattice data)", "bits per dimension"),
    "nll_bpd_se": ("standard error of nll_bpd (test points and log-SNR draws)", "bits per dimension"),
    "nll_gauss_bpd": ("the same estimate for the Gaussian moment-matched to the cell's training rows, on the "
                      "same draws", "bits per dimension"),
    "nll_gauss_bpd_se": ("standard error of nll_gauss_bpd", "bits per dimension"),
    "memorized": ("fraction of generated samples memorized from the cell's training rows (Gu et al. 2023: "
                  "nearest closer than 1/3 of the second nearest)", "1"),
    "memorized_test": ("the same fraction for held-out test points against the cell's training rows "
                       "(false-positive reference)", "1"),
    "similarity_ab": ("mean cosine similarity (centred) between the samples of two networks trained on disjoint "
                      "subsets of size n, from the same initial noise and Brownian path (Kadkhodaie et al. 2024)",
                      "1"),
    "train_similarity": ("mean cosine similarity (centred) of a network's samples to their nearest training row "
                         "of its own subset", "1"),
}
"""Long name and units of each metric of real data (:func:`heldout_dsm`, the I-MMSE NLL of a held-out
part, :func:`memorized`, :func:`paired_similarity`, :func:`nearest_similarity`) as a store variable."""
