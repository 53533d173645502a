"""Why the iVAE's guide has a full covariance: the mean-field ELBO prefers a rotation.

For the linear-Gaussian case of ``cz.identifiability.generators.ivae`` (``n_layers=1``) the
ELBO of fixed parameters is available in closed form, with the best guide of each family:

* mean-field: posterior mean exact, variances ``1 / diag(precision)``;
* full covariance: the exact posterior, so the ELBO equals ``log p(x | u)``.

It prints the ELBO per point at the true parameters and at the whitening rotation of the
sources (decoder with orthonormal rows, segment priors refitted as the best diagonal
Gaussians). Run: ``python benchmarks/ivae_elbo_gap.py``.
"""

from __future__ import annotations

import numpy as np

import causalzoo as cz


def mean_field_elbo(x, segment, a, means, scales, noise_var):
    total = 0.0
    row_norms = np.sum(a * a, axis=1)
    for n in range(len(x)):
        m = segment[n]
        prior_precision = np.diag(1.0 / scales[m] ** 2)
        precision = a @ a.T / noise_var + prior_precision
        mean = np.linalg.solve(precision, a @ x[n] / noise_var + prior_precision @ means[m])
        var = 1.0 / np.diag(precision)
        resid = x[n] - mean @ a
        expected_ll = (-0.5 * len(resid) * np.log(2 * np.pi * noise_var)
                       - 0.5 * (resid @ resid + var @ row_norms) / noise_var)
        kl = 0.5 * np.sum(np.log(scales[m] ** 2 / var)
                          + (var + (mean - means[m]) ** 2) / scales[m] ** 2 - 1)
        total += expected_ll - kl
    return total / len(x)


def log_marginal(x, segment, a, means, scales, noise_var):
    total = 0.0
    for m in np.unique(segment):
        xm = x[segment == m]
        cov = a.T @ np.diag(scales[m] ** 2) @ a + noise_var * np.eye(a.shape[1])
        resid = xm - means[m] @ a
        quad = np.einsum("ni,ij,nj->n", resid, np.linalg.inv(cov), resid)
        total += np.sum(-0.5 * quad - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1])
    return total / len(x)


def main():
    data = cz.identifiability.generators.ivae(n_segments=20, n_per_segment=100, n_latent=5,
                                              n_layers=1, seed=0)
    x, z, seg = data.x.astype(float), data.z.astype(float), data.segment
    a, noise_var = data.mixing[0], 0.01
    u_, s_, vt = np.linalg.svd(a)
    z_rot = z @ (u_ * s_)  # sources whose decoder is the orthonormal vt
    segs = np.unique(seg)
    rot_means = np.stack([z_rot[seg == m].mean(0) for m in segs])
    rot_scales = np.stack([z_rot[seg == m].std(0) for m in segs])
    true = (a, data.means.astype(float), data.scales.astype(float))
    rotated = (vt, rot_means, rot_scales)
    print(f"{'parameters':<22}{'mean-field':>12}{'full':>12}")
    for name, (dec, mu, sd) in (("true", true), ("whitening rotation", rotated)):
        print(f"{name:<22}{mean_field_elbo(x, seg, dec, mu, sd, noise_var):>12.3f}"
              f"{log_marginal(x, seg, dec, mu, sd, noise_var):>12.3f}")


if __name__ == "__main__":
    main()
