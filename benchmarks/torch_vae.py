"""PyTorch eager reference of the seed recipe, for speed comparisons only.

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
