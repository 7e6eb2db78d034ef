"""Probe: LeNet-5-Caffe with sparse momentum at 5 % on MNIST, test accuracy around each topology update.

The reference recipe (``reproduce_mnist.py``: SGD lr 0.1, Nesterov 0.9, wd 5e-4, batch 100, the first
54,000 training images) is run for a few epochs; every 90 steps it prints the step's loss, the accuracy on
the first 2,000 test images and the active weights per layer, so the effect of each end-of-epoch
prune/redistribute/grow cycle is visible in the first lines of the next epoch.

Usage::

    python benchmarks/sparse_momentum/lenet5_probe.py ALGORITHM LR EPOCHS [SEED [reset]]
    python benchmarks/sparse_momentum/lenet5_probe.py sparse-momentum 0.1 6 0

``reset`` adds a plugin whose masking policy zeroes the optimizer state of grown weights
(``reset_grown_state=True``; sparse momentum's own policy keeps it, as the reference does).
"""

import sys

import torch
import torch.nn.functional as F

import sparsecore
from sparsecore.data import load_dataset
from sparsecore.models import create_model

torch.set_num_threads(1)
data = load_dataset("mnist")
algo = sys.argv[1]
lr = float(sys.argv[2])
epochs = int(sys.argv[3])
torch.manual_seed(int(sys.argv[4]) if len(sys.argv) > 4 else 0)
model = create_model("lenet-5-caffe")
opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


class ResetGrownState:
    """Sparse momentum's policy, but grown weights start with zero momentum."""

    @sparsecore.hookimpl
    def masking_policy(self):
        return sparsecore.MaskingPolicy(mask_weights=True, mask_gradients=False, mask_optimizer_state=False,
                                        reset_grown_state=True)


extra = [ResetGrownState()] if len(sys.argv) > 5 and sys.argv[5] == "reset" else []
sp = None if algo == "dense" else sparsecore.Sparsifier(model, opt, algorithm=algo, density=0.05,
                                                        total_steps=540 * 100, seed=0, plugins=extra)
g = torch.Generator().manual_seed(0)
x, y = data.train.x[:54000], data.train.y[:54000]
for epoch in range(epochs):
    order = torch.randperm(54000, generator=g)
    for i in range(540):
        idx = order[i * 100:(i + 1) * 100]
        opt.zero_grad()
        loss = F.nll_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        if i % 90 == 0:
            with torch.no_grad():
                acc = (model(data.test.x[:2000]).argmax(1) == data.test.y[:2000]).float().mean().item()
            print(epoch, i, round(loss.item(), 4), "test acc", round(acc, 4),
                  {n: l.nnz for n, l in sp.layers.items()} if sp else "", flush=True)
    if sp:
        sp.epoch_end(epoch)
