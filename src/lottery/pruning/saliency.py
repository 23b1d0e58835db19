"""Pruning at initialization: scores computed on the network at θ0, before any training.

Each method is a short function from (a function of the weights, θ0) to one score per weight; pruning keeps
the highest scores, like the criteria (lottery.pruning.criteria), which score trained weights instead.

- `snip`     (Lee et al. 2019): |∂L/∂m| at m = 1, i.e. |g ⊙ θ|, with g the loss gradient on a few batches.
- `grasp`    (Wang et al. 2020): GraSP removes the weights with the highest −θ ⊙ Hg (H the Hessian of the
             loss, g its gradient): the ones whose removal reduces the gradient flow least. Kept here as the
             highest θ ⊙ Hg, the same ranking with the sign that "keep the highest" needs. As in the
             authors' code, the loss is taken on the logits divided by a temperature of 200 (GRASP_TEMPERATURE).
- `synflow`  (Tanaka et al. 2020): data-free. R = 1ᵀ(∏ |W_l|) 1, the network's output sum on an all-ones
             input with every weight replaced by its magnitude; score |θ ⊙ ∂R/∂θ|, recomputed over
             `rounds` rounds of pruning on an exponential schedule (the paper: 100), which avoids layer
             collapse.
- `magnitude` |θ0| and `random`: the baselines.

The functions see the network only through `loss(params)` / `output(params)` callables over a dict of
tensors (torch.func.functional_call), so they work for any module, and they never change θ0.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from lottery.pruning.prune import keep_top

Params = dict[str, torch.Tensor]
Scores = dict[str, torch.Tensor]
PROBE_BATCHES = 10  # SNIP and GraSP score θ0 on this many batches of training examples (one sample per trial)
SYNFLOW_ROUNDS = 100
# What scoring θ0 costs, in training iterations (forward and backward of one batch), for the cost ledger:
# SNIP one gradient on the sample; GraSP a gradient with its graph and a Hessian-vector product (about
# twice); SynFlow one forward and backward of one example per round.
SCORING_ITERATIONS = {"snip": lambda batch: float(PROBE_BATCHES), "grasp": lambda batch: 2.0 * PROBE_BATCHES,
                      "synflow": lambda batch: SYNFLOW_ROUNDS / batch}
GRASP_TEMPERATURE = 200.0  # alecwangcq/GraSP: outputs / T with T = 200 before the loss


def snip(loss: Callable[[Params], torch.Tensor], init: Params, names: list[str]) -> Scores:
    """|g ⊙ θ0| per weight of `names`; `loss` averages over the batches it was built with."""
    params = {n: t.detach().clone().requires_grad_(n in names) for n, t in init.items()}
    grads = torch.autograd.grad(loss(params), [params[n] for n in names])
    return {n: (g * init[n]).abs().detach() for n, g in zip(names, grads)}


def grasp(loss: Callable[[Params], torch.Tensor], init: Params, names: list[str]) -> Scores:
    """θ0 ⊙ Hg per weight: the Hessian-gradient product by double backward (g held constant, as in the paper:
    Hg = ∂(gᵀ stop_grad(g))/∂θ)."""
    params = {n: t.detach().clone().requires_grad_(n in names) for n, t in init.items()}
    leaves = [params[n] for n in names]
    grads = torch.autograd.grad(loss(params), leaves, create_graph=True)
    fixed = [g.detach() for g in grads]
    dot = sum((g * f).sum() for g, f in zip(grads, fixed))
    hessian_grad = torch.autograd.grad(dot, leaves)
    return {n: (init[n] * hg).detach() for n, hg in zip(names, hessian_grad)}


def synflow_scores(output: Callable[[Params], torch.Tensor], weights: Params, names: list[str]) -> Scores:
    """One round of SynFlow: |θ ⊙ ∂R/∂θ| with R the summed output of the network whose weights are |θ|
    (θ already masked), on an all-ones input (`output` supplies the input). Float64, as the authors
    recommend: the product of |W| over the layers under- or overflows in float32."""
    params = {n: t.detach().double().abs().requires_grad_(n in names) if t.is_floating_point() else t
              for n, t in weights.items()}  # every float tensor as its magnitude, biases and norms too (the paper's)
    leaves = [params[n] for n in names]
    grads = torch.autograd.grad(output(params).sum(), leaves)
    return {n: (g * p).abs().detach() for n, g, p in zip(names, grads, leaves)}


def synflow(output: Callable[[Params], torch.Tensor], init: Params, names: list[str],
            keep: Mapping[str, int] | int, rounds: int = SYNFLOW_ROUNDS, invert: bool = False) -> tuple[Scores, dict[str, torch.Tensor]]:
    """Iterative SynFlow over `rounds` rounds on an exponential schedule: round r keeps
    n·(k/n)^(r/rounds) of n weights, ending at exactly `keep`: a count per tensor (layer-wise), or one count
    over all of `names` pooled (global, the paper's). Returns the last round's scores and the final mask.
    Weights outside `names` (biases, norms) take part unmasked. `invert`: keep the lowest scores each round
    (Frankle et al. 2021's inverted control)."""
    mask = {n: torch.ones_like(init[n], dtype=torch.bool) for n in names}
    scores: Scores = {}
    for r in range(1, rounds + 1):
        masked = {n: (t * mask[n] if n in mask else t) for n, t in init.items()}
        scores = synflow_scores(output, masked, names)
        if invert:
            scores = {n: -s for n, s in scores.items()}
        if isinstance(keep, int):
            mask = keep_top(scores, mask, names, scheduled(sum(init[n].numel() for n in names), keep, r, rounds))
        else:
            mask = {n: keep_top(scores, mask, [n], scheduled(init[n].numel(), keep[n], r, rounds))[n] for n in names}
    return scores, mask


def scheduled(total: int, final: int, r: int, rounds: int) -> int:
    """How many of `total` weights round r of `rounds` keeps: total·(final/total)^(r/rounds), exactly
    `final` at the last round, never below it."""
    if r >= rounds or total == 0:
        return final
    return max(final, min(total, int(round(total * (final / total) ** (r / rounds)))))


class InitProbe:
    """The network at θ0 as the methods see it: `loss(params)` on a fixed sample of training examples
    (eval mode: no dropout draw, BatchNorm on its running statistics, so the scores are a pure function of
    θ0 and the sample) and `output(params)` on an all-ones input of one example (SynFlow)."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor | None, y: torch.Tensor | None,
                 input_shape: tuple[int, ...], features: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        self.model, self.x, self.y, self.input_shape, self.features = model, x, y, input_shape, features
        self._remembered: dict[str, Scores] = {}

    def remember(self, key: str, compute: Callable[[], Scores]) -> Scores:
        """Scores that depend on θ0 and this probe's sample only (SNIP, GraSP): computed once."""
        if key not in self._remembered:
            self._remembered[key] = compute()
        return self._remembered[key]

    def loss(self, params: Params, temperature: float = 1.0) -> torch.Tensor:
        """Cross-entropy of the logits divided by `temperature` (GraSP's code uses 200)."""
        if self.x is None or self.y is None:
            raise ValueError("this method needs training examples (SNIP, GraSP); none were given")
        self.model.eval()
        logits = torch.func.functional_call(self.model, params, (self.features(self.x),))
        return torch.nn.functional.cross_entropy(logits.float() / temperature, self.y)

    def output(self, params: Params) -> torch.Tensor:
        self.model.eval()
        ones = torch.ones((1, *self.input_shape), dtype=torch.float64, device=next(iter(params.values())).device)
        return torch.func.functional_call(self.model, params, (ones,))  # every tensor given, in float64
