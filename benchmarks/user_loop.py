"""The loop a user would write: torchvision data set with ToTensor, a DataLoader, the same model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset


def user_training(
    root: str,
    n_train: int,
    batch_size: int,
    lr: float,
    epochs: int,
    model: torch.nn.Module,
    device: torch.device,
    seed: int = 0,
) -> None:
    from torchvision import transforms
    from torchvision.datasets import FashionMNIST

    torch.manual_seed(seed)
    train_set = FashionMNIST(root, train=True, transform=transforms.ToTensor(), download=False)
    test_set = FashionMNIST(root, train=False, transform=transforms.ToTensor(), download=False)
    train_set = Subset(train_set, range(n_train))
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True)
    test_loader = DataLoader(test_set, batch_size=2048)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                x, y = x.to(device), y.to(device)
                correct += (model(x).argmax(1) == y).sum().item()
