"""Kipf & Welling's graph convolutional network (ICLR 2017) with a learned weight per citation, the graph
lottery ticket's edge mask (Chen et al., ICML 2021, "A Unified Lottery Ticket Hypothesis for GNNs").

Message passing runs over the edge list (never a dense N x N adjacency): each layer transforms every node,
then sums over its neighbours, O(E x width). The graph is data, not state: it is held as plain attributes
(shared by every replica of a pass), and the model's input is a batch of node indices, whose logits it
returns from one forward over the whole graph.

The edge weights: one parameter per *undirected* citation, used for both directions (so a mask over it is
symmetric by construction; self-loops are never in it, never pruned). θ0 is 1 plus a uniform jitter of 1e-5
(as UGS's `add_trainable_mask_noise`, so that magnitudes never tie). Each layer aggregates
    h'_i = h_i / d_i + sum over kept edges (i, j) of h_j / sqrt(d_i d_j)
with d the degrees of the full graph plus the self-loop (UGS multiplies the normalized adjacency by its mask
in the same way: a pruned edge drops out, the normalization stays). The edge weight is a score, not a
multiplier: the forward multiplies each kept edge by exactly 1 and passes the gradient with respect to that
multiplier to the edge weight's magnitude (straight through), so Adam moves |w| down where the loss wants
the citation gone and up where it wants more of it, and the magnitude criterion prunes the lowest. Edges
outside every labelled node's 2-hop receptive field get no gradient and keep |w| = 1 +- 1e-5 (Hui et al.
2023's point: the jitter then decides among them). Why not UGS's soft
multiplier: trained jointly as a value, the edge weights overfit the 140 labelled nodes (measured on Cora:
70.1% test accuracy against 81.9% with the graph fixed); UGS reports its tickets retrained with binary
masks, which is what each level trains here. Kipf's bias comes after the aggregation. DropEdge (Rong et al.
2020): in training, each kept edge is dropped with probability `dropedge`.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lottery.data.graph import Graph

EDGE_JITTER = 1e-5
# Widest first layer that multiplies the features by gathering rows of its weight. Above it, a sparse CSR
# product: measured on the 2-core Xeon (one thread, Cora, forward + backward) 2.4 ms against 4.7 ms at width
# 16, and 12 ms against 191 ms at UGS's 512, where the gather's [nonzeros x width] intermediates (25M floats)
# dominate. The gather stays for Kipf's narrow GCN because docs/graph's runs were made with it: they
# reproduce to the bit (the two products differ in the last bits, 2e-7).
GATHER_MAX_WIDTH = 32


class GCN(nn.Module):
    transductive = True  # a forward computes every node, whatever the batch: evaluate a set in one chunk
    extra_prunable = {"edge_weight": "edge"}  # prunable besides the product weights (lottery.models.prunable)
    decayed_parameters = ("layers.0.weight",)  # weight decay on the first layer only, as Kipf & Welling

    def __init__(self, graph: Graph, hidden: list[int], num_classes: int, dropout: float = 0.5,
                 dropedge: float = 0.0) -> None:
        super().__init__()
        widths = [graph.features.shape[1], *hidden, num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(b)) for b in widths[1:])
        self.dropout, self.dropedge = dropout, dropedge
        for layer in self.layers:  # Glorot uniform, as Kipf & Welling
            nn.init.xavier_uniform_(layer.weight)
        device = graph.features.device
        self.edge_weight = nn.Parameter(1 + (2 * torch.rand(graph.num_edges) - 1).to(device) * EDGE_JITTER)
        # The graph, not registered: shared by every replica, never stacked, saved or pruned. The features
        # are a sparse bag of words (1.3% nonzero on Cora): kept as their nonzeros, dropped out as such
        # (Kipf's sparse dropout) and multiplied by gathering rows of the first weight.
        self.features, self.i, self.j = graph.features, graph.edges[0].contiguous(), graph.edges[1].contiguous()
        self.rows, self.cols = graph.features.nonzero(as_tuple=True)
        self.values = graph.features[self.rows, self.cols]
        self.row_starts = torch.zeros(graph.num_nodes + 1, dtype=torch.long, device=device)
        self.row_starts[1:] = torch.bincount(self.rows, minlength=graph.num_nodes).cumsum(0)  # rows come sorted
        degree = torch.ones(graph.num_nodes, device=device).index_add_(
            0, graph.edges.flatten(), torch.ones(2 * graph.num_edges, device=device))
        self.self_coef = (1 / degree).unsqueeze(1)
        self.edge_coef = (degree[self.i] * degree[self.j]).rsqrt()

    def aggregate(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        w = (weight * self.edge_coef).unsqueeze(1)
        out = h * self.self_coef
        out = out.index_add(0, self.i, torch.index_select(h, 0, self.j) * w)
        return out.index_add(0, self.j, torch.index_select(h, 0, self.i) * w)

    def edge_gate(self) -> torch.Tensor:
        """Each citation's multiplier in the forward: 1 where kept, 0 where pruned (its weight is exactly 0
        then), with the gradient of the loss with respect to that multiplier flowing into the edge weight."""
        magnitude = self.edge_weight.abs()  # d|w|/dw = sign(w): |w| moves the way the loss wants the edge
        kept = (magnitude != 0).to(magnitude.dtype)
        return kept + (magnitude - magnitude.detach()) * kept

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        weight = self.edge_gate()
        if self.training and self.dropedge > 0:
            weight = weight * (torch.rand_like(weight) >= self.dropedge)
        first = self.layers[0].weight  # [hidden, features]
        # Dropout on the nonzeros only (3.9M draws for Cora's dense matrix cost 48 ms, its 49K nonzeros
        # nothing), then x @ W over the nonzeros.
        values = F.dropout(self.values, self.dropout, self.training)
        h = self.transform_features(values, first)
        h = self.aggregate(h, weight) + self.biases[0]
        for k in range(1, len(self.layers)):  # indexed: a sliced ParameterList escapes functional_call
            h = F.dropout(F.relu(h), self.dropout, self.training)
            h = self.aggregate(self.layers[k](h), weight) + self.biases[k]
        return h[nodes]

    def transform_features(self, values: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """x @ first.T for the features with these nonzero values. Both ways add in a fixed order, so outputs
        and gradients are the same bits every run (measured: W's rows gathered by advanced indexing
        back-propagate through scattered additions that were not, nor was the dense product's weight
        gradient, once in about ten runs)."""
        nodes, width = self.features.shape[0], first.shape[0]
        if width <= GATHER_MAX_WIDTH:  # rows of W gathered and summed per node: index_select and index_add
            rows = torch.index_select(first.T.contiguous(), 0, self.cols) * values.unsqueeze(1)
            return first.new_zeros(nodes, width).index_add(0, self.rows, rows)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
            warnings.filterwarnings("ignore", "Sparse invariant checks are implicitly disabled", UserWarning)
            features = torch.sparse_csr_tensor(self.row_starts, self.cols, values, self.features.shape)
        # No bf16 kernel for a sparse CSR product on the CPU: it runs in float32 under autocast too.
        with torch.autocast(first.device.type, enabled=False):
            return features @ first.float().T

    def inference_macs(self, kept: dict[str, int]) -> int:
        """Multiply-accumulates of one forward over the whole graph with `kept` weights per prunable tensor:
        each layer's transform (every node times the kept weights, the features counted dense) and its
        aggregation (each kept edge both ways plus each self-loop, times the layer's width)."""
        names = {id(p): n for n, p in self.named_parameters()}
        nodes = self.features.shape[0]
        edges = kept.get(names[id(self.edge_weight)], self.edge_weight.numel())
        total = 0
        for layer in self.layers:
            total += nodes * kept.get(names[id(layer.weight)], layer.weight.numel())
            total += (2 * edges + nodes) * layer.out_features
        return total
