"""A linear-Gaussian VAE whose log p(x) and exact posterior have closed forms.

p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I), so p(x) = N(b, W W^T + s^2 I) and the exact
posterior is N(C W^T (x - b) / s^2, C) with C = (I + W^T W / s^2)^-1. The encoder is linear
(mean = A x + c, a free diagonal log-variance), so it can represent the exact posterior when
C is diagonal, and anything worse otherwise.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vae_jax.models import DecoderOutput


class LinearGaussianVAE(nn.Module):
    x_dim: int
    z_dim: int
    obs_logvar: float
    likelihood: str = "gaussian"

    def setup(self) -> None:
        init = nn.initializers.normal(0.5)
        self.enc_a = self.param("enc_a", init, (self.x_dim, self.z_dim))
        self.enc_c = self.param("enc_c", init, (self.z_dim,))
        self.enc_logvar = self.param("enc_logvar", init, (self.z_dim,))
        self.dec_w = self.param("dec_w", init, (self.z_dim, self.x_dim))
        self.dec_b = self.param("dec_b", init, (self.x_dim,))

    def encode(self, x, label=None):
        mean = x @ self.enc_a + self.enc_c[None]
        return mean, jnp.broadcast_to(self.enc_logvar[None], mean.shape)

    def decode(self, z, label=None):
        bias = self.dec_b.reshape((1,) * (z.ndim - 1) + self.dec_b.shape)
        return DecoderOutput(z @ self.dec_w + bias, jnp.asarray(self.obs_logvar))

    def __call__(self, x, label=None):
        return self.decode(self.encode(x)[0])


def exact_log_px(params, x: np.ndarray, obs_logvar: float) -> np.ndarray:
    """log N(x | b, W^T W + s^2 I) in float64 for each row of x: [batch]."""
    w = np.asarray(params["dec_w"], np.float64)  # [z, x]
    b = np.asarray(params["dec_b"], np.float64)
    cov = w.T @ w + np.exp(obs_logvar) * np.eye(w.shape[1])
    diff = np.asarray(x, np.float64) - b
    _, logdet = np.linalg.slogdet(cov)
    maha = np.einsum("bi,ij,bj->b", diff, np.linalg.inv(cov), diff)
    return -0.5 * (w.shape[1] * np.log(2 * np.pi) + logdet + maha)


def exact_posterior_params(params, obs_logvar: float, *, orthogonal_w: np.ndarray):
    """Parameters with decoder W = `orthogonal_w` (orthogonal rows, so the exact posterior is
    diagonal) and the encoder set to that exact posterior."""
    w = np.asarray(orthogonal_w, np.float64)  # [z, x]
    s2 = np.exp(obs_logvar)
    b = np.asarray(params["dec_b"], np.float64)
    cov = np.linalg.inv(np.eye(w.shape[0]) + w @ w.T / s2)  # diagonal by construction
    a = (cov @ w / s2).T  # mean = (x - b) @ a
    return {
        "enc_a": jnp.asarray(a, jnp.float32),
        "enc_c": jnp.asarray(-b @ a, jnp.float32),
        "enc_logvar": jnp.asarray(np.log(np.diag(cov)), jnp.float32),
        "dec_w": jnp.asarray(w, jnp.float32),
        "dec_b": jnp.asarray(b, jnp.float32),
    }
