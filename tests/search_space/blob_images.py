"""Seeded Gaussian-blob images that small models can learn in a few dozen steps (the learning tests)."""

from __future__ import annotations

import torch


def blobs(
    n: int = 64, size: int = 28, channels: int = 3, seed: int = 0, *, classes: int = 4, layout: str = "radius"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, channels, size, size), labels (n,)) with label i % classes for image i.

    ``layout`` says what the class changes, each drawing its own seeded images:

    - "radius": a blob at a random central position; the class sets its radius and which channels
      are bright; light noise.
    - "corner": a bright blob near corner c (jittered) for class c (at most 4 classes) on heavier noise.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    if layout == "corner":
        corners = torch.tensor([[0.3, 0.3], [0.3, 0.7], [0.7, 0.3], [0.7, 0.7]])[:classes] * size
        centres = corners[labels] + (torch.rand(n, 2, generator=g) - 0.5) * 0.15 * size  # (n, 2) as (y, x)
        grid = torch.arange(size, dtype=torch.float32)
        dy = (grid[None, :] - centres[:, :1]) ** 2  # (n, S)
        dx = (grid[None, :] - centres[:, 1:]) ** 2
        blob = torch.exp(-(dy[:, :, None] + dx[:, None, :]) / (2 * (size / 10) ** 2))  # (n, S, S)
        return 2 * blob[:, None] + 0.2 * torch.randn(n, channels, size, size, generator=g), labels
    if layout != "radius":
        raise ValueError(f"unknown blob layout {layout!r}; choose 'radius' or 'corner'")
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images = torch.zeros(n, channels, size, size)
    for i, c in enumerate(labels.tolist()):
        cy, cx = (torch.rand(2, generator=g) * 0.4 + 0.3) * size
        r = size * (0.12 + 0.06 * (c % 2))
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        for ch in range(channels):
            images[i, ch] = blob * (1.0 if (ch + c // 2) % 2 == 0 else 0.3)
    return images + 0.05 * torch.randn(images.shape, generator=g), labels


def train_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *, lr: float = 3e-3,
                target: float | None = None) -> tuple[float, int]:
    """Full-batch Adam on (x, y) with the model's auxiliary loss, as the trial loop trains it.

    With ``target``, train accuracy is checked every 10 steps and training stops once it is reached.
    Returns (the last train accuracy measured, or -1 if never, the steps taken).
    """
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    accuracy = -1.0
    for step in range(steps):
        model.train()
        logits = model(x)
        loss = F.cross_entropy(logits, y) + model.auxiliary_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if target is not None and step % 10 == 9:
            model.eval()
            with torch.no_grad():
                accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
            if accuracy >= target:
                return accuracy, step + 1
    return accuracy, steps
