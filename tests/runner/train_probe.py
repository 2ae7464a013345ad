"""How learnable a dataset is: a plain-torch CNN trained on its train split (AdamW, one-cycle, batches
of 64), scored on its validation split. Shared by the synthetic-data tests and benchmarks/bench_data.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runner.data import CellDataset


def val_accuracy(net: nn.Module, data: CellDataset, *, epochs: int, lr: float) -> float:
    """Train ``net`` on ``data`` for ``epochs`` and return its validation accuracy."""
    train = len(data.train_y)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=epochs * -(-train // 64))
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(train).split(64):
            loss = F.cross_entropy(net(data.images("train", idx)), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        return (net(data.images("val")).argmax(1) == data.val_y).float().mean().item()
