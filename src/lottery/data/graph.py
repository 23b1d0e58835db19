"""A graph whose nodes are a dataset's examples (node classification: Cora, CiteSeer)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Graph:
    """One graph on the device: node features [N, F] (float32, rows summing to 1), each undirected edge
    once as (i, j) with i < j ([2, E], int64, no self-loops), every node's label ([N], -1: none), topics."""

    features: torch.Tensor
    edges: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[1])

    def to(self, device: torch.device | str) -> "Graph":
        return Graph(self.features.to(device), self.edges.to(device), self.labels.to(device), self.class_names)
