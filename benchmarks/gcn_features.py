"""The GCN's feature product at Kipf's width 16 and UGS's 512: gathered rows of W against a sparse CSR product.

    python benchmarks/gcn_features.py [DATA_DIR]

One training step (forward, backward, Adam) plus one evaluation forward over Cora, per path and width, in one
process. lottery.models.gcn takes the gather up to GATHER_MAX_WIDTH and the CSR product above it; this script
forces each path in turn to show what the choice costs.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import lottery
from lottery.models import build_model, gcn
from common import data_dir, timed


def step_seconds(data: lottery.Dataset, width: int, repeat: int) -> float:
    torch.manual_seed(0)
    model = build_model(lottery.ModelConfig(name="gcn", hidden=[width]), data.input_shape, data.num_classes,
                        data.graph)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def step() -> None:
        model.train()
        loss = F.cross_entropy(model(data.x_train), data.y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            model(data.x_val)
    return timed(step, repeat)


def main() -> None:
    data = lottery.load_dataset("cora", sys.argv[1] if len(sys.argv) > 1 else data_dir())
    print(f"threads {torch.get_num_threads()}; seconds per train + eval step on Cora")
    print("width  gather  csr    gather/csr")
    for width, repeat in ((16, 50), (512, 10)):
        seconds = {}
        for path, limit in (("gather", 10**9), ("csr", 0)):
            gcn.GATHER_MAX_WIDTH = limit  # the module's switch, forced for the comparison
            seconds[path] = step_seconds(data, width, repeat)
        print(f"{width:5d}  {seconds['gather']:.4f}  {seconds['csr']:.4f}  {seconds['gather'] / seconds['csr']:.1f}x")


if __name__ == "__main__":
    main()
