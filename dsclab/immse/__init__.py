"""Likelihood from the MMSE curve (Kong, Brekelmans & Ver Steeg 2023, "Information-theoretic
diffusion"; science.md §6, project issue 4).

Conventions
-----------
Gaussian channel  z = sqrt(gamma) x + eps,  eps ~ N(0, I_d),  gamma = snr,  alpha = log gamma.
It is the OU forward process of ``dsclab.noise`` read at t = t_from_logsnr(alpha):
X_t = e^{-t} x + sigma_t eps = sigma_t z, because e^{-t} / sigma_t = sqrt(gamma).

A *denoiser* is a callable ``denoise(x_t, t) -> x0_hat`` in OU convention, exactly like
``GaussianMixture.denoise``: ``x_t (M, d)`` and ``t (M,)`` (one time per row; it must accept a
tensor of times) return E[X_0 | X_t = x_t] or an estimate of it, shape ``(M, d)``. A score
``score(x, t)`` becomes a denoiser with :func:`denoiser_from_score_fn` (Tweedie).

The noise-prediction error is  eps - eps_hat = sqrt(gamma) (x_hat - x), so the pointwise curve is

    mmse_eps(x, alpha) = E_eps || eps - eps_hat(z, alpha) ||^2 = gamma E_eps || x - x_hat ||^2 ,

computed as gamma ||x - x_hat||^2 (no cancellation at high SNR). Integrals over alpha are on the
log-SNR axis, which is why the factor gamma appears (d gamma = gamma d alpha).

Estimators (nats; per data point x, pointwise identities of the paper)
------------------------------------------------------------------------
* continuous, reference Gaussian with covariance eigenvalues lam_i (science.md §6):

      -log p(x) = h_G + 1/2 int [ mmse_eps(x, alpha) - sum_i sigmoid(alpha + log lam_i) ] d alpha,
      h_G = (d/2) log(2 pi e) + 1/2 sum_i log lam_i.

  ``reference="matched"`` uses the data spectrum; ``reference="standard"`` is lam_i = 1, i.e.
  h = (d/2) log(2 pi e) and the subtracted curve d sigmoid(alpha). Both identities hold pointwise
  (for every x, not only on average): for the Bayes denoiser of N(mu, Sigma) one finds
  mmse_eps(x, alpha) = sum_i [(y_i^2/lam_i) sigmoid'(alpha + log lam_i) + sigmoid(alpha + log lam_i)^2]
  with y = U^T (x - mu), whose integral reproduces -log N(x; mu, Sigma) exactly.
* discrete (lattice-valued x; the denoiser must snap to the lattice at high SNR):

      -log P(x) = 1/2 int mmse_eps(x, alpha) d alpha        (no constant).

* mismatch: run with the Bayes denoiser of another law Q, the same formulas return -log q(x) at
  every x (the identity is a property of q's denoiser, not of where x came from). Averaged over
  x ~ P this is the cross-entropy H(P) + KL(P || Q) >= H(P).

Integration over alpha (paper's sampler; choice of loc and scale)
-----------------------------------------------------------------
alpha ~ logistic(loc, scale) truncated to [loc - clip scale, loc + clip scale] (clip = 4), with
importance weight w = scale tanh(clip/2) / (sigmoid(v) sigmoid(-v)), v = (alpha - loc)/scale;
tanh(clip/2) = sigmoid(clip) - sigmoid(-clip) is the truncated mass, so E[w f(alpha)] is exactly
the integral of f over the *truncated* range: the estimators are unbiased for the truncated
integral, and the part of the integrand outside the range is dropped (a bias that vanishes as
clip grows; for Gaussian data it is computed in closed form in the tests).

loc = -mean_i log lam_i and scale = sqrt(1 + (3/pi) Var_i(log lam_i)) (population variance over
the d eigenvalues), the choice of the authors' code (kxh001/ITdiffusion, ``dataset_info``). Reason:
for the matched Gaussian the MMSE-gap integrand is a sum of logistic densities in alpha centred at
-log lam_i with unit scale; their mixture has mean -mean(log lam) and variance
pi^2/3 + Var(log lam), which a logistic(scale) matches at scale = sqrt(1 + 3 Var / pi^2). The
authors' code writes 3/pi instead of 3/pi^2, i.e. a wider proposal; we adopt it as published
(wider only reduces the truncation bias). scale >= 1 always, which keeps w f(alpha) bounded:
the gap decays like e^{-|alpha - c|} in both tails while w grows like e^{|alpha - loc| / scale}.

Control variate (our addition, not in the paper; on by default for the continuous estimator)
------------------------------------------------------------------------------------------
At high SNR and continuous data eps_hat -> 0 is impossible: ||eps - eps_hat||^2 -> ||eps||^2, a
chi^2_d variable whose noise, times w ~ e^{v}, makes the variance grow like e^{clip}. Replacing
the subtracted curve mmse_G(alpha) = sum_i sigmoid(alpha + log lam_i) by (||eps||^2 / d) mmse_G(alpha)
with the *same* eps changes nothing in expectation (E ||eps||^2 = d) and cancels that noise.

Ensembles
---------
:func:`ensemble_nll` takes several denoisers; for each alpha it averages each model's MSE over
the data set (same eps for every model) and keeps the smallest, then integrates. For each alpha
the Bayes MMSE is at most every model's data-averaged MSE, hence at most their minimum, so the
result is an upper bound in expectation on the (cross-)entropy E_x[-log p(x)], at least as tight
as each member. Two caveats, documented rather than hidden: (i) with the matched reference
(eigenvalues of the true covariance) truncation keeps it a bound, because the Bayes gap
mmse - mmse_G is <= 0 for every alpha (the Gaussian has the largest MMSE at a given covariance),
so dropping it can only raise the estimate; with the standard reference the sign of the dropped
part is not fixed. (ii) The minimum of Monte Carlo averages is biased low by the order of their
noise; use many data points per alpha. The paper's test-time clamp max(mmse_G - mse, 0) is the
ensemble with the matched-Gaussian denoiser (:func:`moment_matched_gaussian`).

Data-set estimates (:func:`gap_terms`, :func:`crossed_estimates`, :func:`data_set_nll`)
-------------------------------------------------------------------------------------
To score models on a held-out set, every model sees the same J log-SNR draws and, per draw and
point, the same eps; the terms T_ji form a crossed (draw x point) design whose SE covers both the
points' sampling and the draws' (:func:`crossed_mean`), optionally paired against the exact
-log p(x_i) of the same points. Draws may be stratified in the logistic's CDF (one per stratum),
which leaves the estimate unbiased and, for the discrete estimator (no reference curve to
subtract), cuts its SE about tenfold at J = 128. Lattice data: denoisers are clamped to the
lattice's box (:func:`clamp_to_box`, never increases the error) and the range is truncated,
which amounts to hard rounding above b (see :func:`data_set_nll`).

Shapes: data ``x (m, d)``; log-SNR vectors ``alpha (k,)``; estimates come back as
:class:`Estimate` (value and Monte Carlo standard error, float64). Randomness only through the
``torch.Generator`` passed in.
"""
from dsclab.immse.core import *  # noqa: F401,F403
from dsclab.immse.core import __all__ as _core
from dsclab.immse.ensemble import *  # noqa: F401,F403
from dsclab.immse.ensemble import __all__ as _ensemble

__all__ = [*_core, *_ensemble]
