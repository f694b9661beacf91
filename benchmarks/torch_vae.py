"""PyTorch eager references of the seed recipe and the conv VAE, for speed comparisons only.

A transcription of pytorch/examples ``vae/main.py``: MLP 784-400-20 with ReLU (``fc1``
784-400, ``fc21``/``fc22`` 400-20, ``fc3`` 20-400, ``fc4`` 400-784), sigmoid outputs,
``binary_cross_entropy(..., reduction="sum")`` plus the analytic KL (summed over the batch,
as upstream), Adam with learning rate 1e-3, batch 128, ``loss.item()`` read every step.

One deliberate difference: no ``DataLoader``. Upstream iterates a shuffled
``torch.utils.data.DataLoader`` over ``torchvision`` MNIST with ``ToTensor()``; here the whole
training set is converted once to a float32 tensor in [0, 1] and each epoch indexes it with
a random permutation (the last batch smaller, as upstream). This removes the DataLoader's
per-example Python and PIL overhead, so the reference is faster than upstream, not slower:
the comparison favours PyTorch.

`ConvVAE` and `ConvTrainer` are the conv VAE of `vae_jax.models.ConvEncoder`/`ConvDecoder`
(the `conv32` recipe's architecture) written layer for layer in PyTorch, for
`benchmarks/conv.py`.

Requires the optional ``bench`` extra (CPU wheel: ``pip install torch==2.13.0``).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class VAE(nn.Module):
    """The upstream model, layer for layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(
    recon_x: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """Upstream's loss: BCE summed over pixels and the batch, plus the batch-summed KL (nats)."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


class TorchTrainer:
    """Holds the model, the optimiser and the training set as a float32 tensor.

    Args:
      images: uint8 [N, 28, 28, 1] grey levels (converted once to float32 [N, 784] in [0, 1]).
      batch_size: examples per step.
      seed: seeds ``torch.manual_seed`` and the epoch permutations.
      num_threads: ``torch.set_num_threads`` (intra-op threads).
    """

    def __init__(
        self, images: np.ndarray, *, batch_size: int = 128, seed: int = 0, num_threads: int = 2
    ) -> None:
        self.num_threads = num_threads
        torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        self.data = torch.from_numpy(images.reshape(len(images), 784).astype(np.float32) / 255.0)
        self.batch_size = batch_size
        self.model = VAE()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.generator = torch.Generator().manual_seed(seed)

    def train_epoch(self, max_steps: int | None = None) -> tuple[float, float]:
        """One epoch (or its first `max_steps` steps) as upstream's ``train(epoch)``.

        Returns:
          (seconds, mean train loss in nats per example) for the steps run.
        """
        torch.set_num_threads(self.num_threads)  # per process: trainers may differ
        self.model.train()
        n = len(self.data)
        start = time.perf_counter()
        perm = torch.randperm(n, generator=self.generator)
        train_loss, seen = 0.0, 0
        for step, begin in enumerate(range(0, n, self.batch_size)):
            if max_steps is not None and step >= max_steps:
                break
            data = self.data[perm[begin : begin + self.batch_size]]
            self.optimizer.zero_grad()
            recon_batch, mu, logvar = self.model(data)
            loss = loss_function(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            self.optimizer.step()
            seen += len(data)
        return time.perf_counter() - start, train_loss / max(seen, 1)


class ConvVAE(nn.Module):
    """vae_jax's conv VAE in PyTorch: stride-2 4x4 convs (padding 1) with GroupNorm(min(8, C))
    and LeakyReLU(0.2), a Dense to 2 * z_dim; decoder Dense -> LeakyReLU -> transposed 4x4
    stride-2 convs (GroupNorm, LeakyReLU) -> a last transposed conv to the image's channels
    (logits). The same layers and parameter count as `vae_jax.VAE(architecture="conv")`."""

    def __init__(self, image_size: int, channels: tuple[int, ...], z_dim: int = 20) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for width in channels:
            layers += [
                nn.Conv2d(cin, width, 4, stride=2, padding=1),
                nn.GroupNorm(min(8, width), width),
                nn.LeakyReLU(0.2),
            ]
            cin = width
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self.start = (channels[-1], image_size // 2 ** len(channels))
        flat = channels[-1] * self.start[1] ** 2
        self.head = nn.Linear(flat, 2 * z_dim)
        self.fc = nn.Linear(z_dim, flat)
        layers = []
        for width in reversed(channels[:-1]):
            layers += [
                nn.ConvTranspose2d(cin, width, 4, stride=2, padding=1),
                nn.GroupNorm(min(8, width), width),
                nn.LeakyReLU(0.2),
            ]
            cin = width
        layers.append(nn.ConvTranspose2d(cin, 1, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.head(self.encoder(x)).chunk(2, dim=1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        channels, side = self.start
        h = F.leaky_relu(self.fc(z), 0.2).view(-1, channels, side, side)
        if x.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)
        return self.decoder(h), mean, logvar


class ConvTrainer:
    """One Adam step (learning rate 1e-3) at a time on fixed binary batches, for timing.

    The loss is vae_jax's: Bernoulli log-likelihood from logits summed over pixels plus the
    analytic KL, averaged over the batch (nats per example).

    Args:
      images: float32 [N, 1, H, W] in [0, 1].
      channels: conv widths, e.g. (32, 64, 128) for conv32.
      batch_size: examples per step.
      channels_last: NHWC memory format (oneDNN's preferred layout on CPU).
      num_threads: ``torch.set_num_threads`` before each call.
    """

    def __init__(
        self,
        images: np.ndarray,
        channels: tuple[int, ...],
        *,
        batch_size: int,
        channels_last: bool,
        num_threads: int = 2,
        seed: int = 0,
    ) -> None:
        torch.manual_seed(seed)
        self.num_threads = num_threads
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = ConvVAE(images.shape[-1], channels).to(memory_format=fmt)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.data = torch.from_numpy(images).contiguous(memory_format=fmt)
        self.batch_size = batch_size

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def train_steps(self, steps: int) -> float:
        """Run `steps` steps (batches taken in turn from the data); returns the last loss."""
        torch.set_num_threads(self.num_threads)
        loss = torch.zeros(())
        for s in range(steps):
            begin = (s * self.batch_size) % (len(self.data) - self.batch_size + 1)
            x = self.data[begin : begin + self.batch_size]
            self.optimizer.zero_grad()
            logits, mean, logvar = self.model(x)
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())
            loss = (rec + kl) / len(x)
            loss.backward()
            self.optimizer.step()
        return float(loss.item())
