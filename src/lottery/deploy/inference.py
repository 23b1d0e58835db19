"""Does sparsity pay at inference? A ticket's network timed in each form it can take, outputs checked.

Forms (`Form`: a runtime, the form of the weights, a precision): `dense` (the masked network as it is: zeros
multiplied like any weight), `compact` (the units the mask removes cut out: a smaller dense network), `csr`
and `bsr` (each Linear / Conv2d weight as a torch.sparse CSR or BSR matrix; convolutions as unfold + sparse
matmul), and whatever other runtime the caller adds (lottery.deploy.runtime: ONNX Runtime, float32 and
int8). Latency at batch 1 and throughput at batch 256, whole network and per layer, with
torch.utils.benchmark (warm-up, fixed threads, median) at each thread count asked; each form's accuracy and
its outputs against dense, so that a faster form that loses accuracy shows it; the bytes each form keeps for
its weights; and, per layer shape, the density below which CSR / BSR beat dense.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

from lottery.deploy.compact import WEIGHTED

DENSITIES = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)
SPARSE_LAYOUTS = ("csr", "bsr")


def block_size(rows: int, columns: int, largest: int = 4) -> tuple[int, int]:
    """The BSR block: square (MKL's CPU kernels take no other), the largest side up to `largest` that
    divides both dimensions (1 when none does: then BSR is CSR with more bookkeeping)."""
    side = math.gcd(math.gcd(rows, columns), largest)
    return side, side


def sparse_matrix(weight: torch.Tensor, layout: str) -> torch.Tensor:
    matrix = weight.detach().reshape(weight.shape[0], -1)
    if layout not in SPARSE_LAYOUTS:
        raise ValueError(f"unknown sparse layout {layout!r}; known: {', '.join(SPARSE_LAYOUTS)}")
    with warnings.catch_warnings():  # here only: the caller's own warning filters stay as they were
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        if layout == "csr":
            sparse, build = matrix.to_sparse_csr(), torch.sparse_csr_tensor
        else:
            sparse, build = matrix.to_sparse_bsr(block_size(*matrix.shape)), torch.sparse_bsr_tensor
    if max(matrix.shape[0] + 1, sparse.values().shape[0]) >= 2**31:
        return sparse
    # 32-bit indices when they fit: half the index bytes, and measured ~20% faster at batch 1 on this CPU
    # (the same at batch 256); torch makes them 64-bit.
    return build(sparse.crow_indices().int(), sparse.col_indices().int(), sparse.values(), sparse.shape,
                 check_invariants=True)  # once, here: the indices come from torch's own conversion


class SparseLinear(nn.Module):
    def __init__(self, layer: nn.Linear, layout: str) -> None:
        super().__init__()
        self.weight = sparse_matrix(layer.weight, layout)
        self.bias = None if layer.bias is None else layer.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.weight @ x.t()).t()
        return y if self.bias is None else y + self.bias


class SparseConv2d(nn.Module):
    """A convolution as unfold + one sparse matrix product over every position of the batch."""

    def __init__(self, layer: nn.Conv2d, layout: str) -> None:
        super().__init__()
        if layer.groups != 1 or layer.dilation != (1, 1) or isinstance(layer.padding, str):
            raise ValueError("sparse convolution supports groups=1, dilation 1 and numeric padding")
        self.weight = sparse_matrix(layer.weight, layout)
        self.bias = None if layer.bias is None else layer.bias.detach().clone()
        self.kernel, self.padding, self.stride = layer.kernel_size, layer.padding, layer.stride
        self.out_channels = layer.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        columns = F.unfold(x, self.kernel, padding=self.padding, stride=self.stride)  # [B, C*k*k, L]
        out_h = (height + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
        out_w = (width + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
        y = self.weight @ columns.transpose(0, 1).reshape(columns.shape[1], -1)  # [Cout, B*L]
        y = y.reshape(self.out_channels, batch, out_h, out_w).transpose(0, 1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def sparse_form(chain: nn.Sequential, layout: str) -> nn.Sequential:
    """The chain with every Linear / Conv2d weight held as a sparse matrix (`layout`: csr or bsr)."""
    return nn.Sequential(*[sparse_layer(m, layout) if isinstance(m, WEIGHTED) else m for m in chain]).eval()


def weight_bytes(module: nn.Module) -> int:
    """Bytes the form keeps for its weights and biases (a sparse matrix: values, indices and offsets)."""
    total = 0
    for m in module.modules():
        if any(True for _ in m.children()):
            continue
        for tensor in (getattr(m, "weight", None), getattr(m, "bias", None)):
            if not isinstance(tensor, torch.Tensor):
                continue
            sparse = tensor.layout in (torch.sparse_csr, torch.sparse_bsr)
            parts = [tensor.values(), tensor.col_indices(), tensor.crow_indices()] if sparse else [tensor]
            total += sum(p.numel() * p.element_size() for p in parts)
    return total


def seconds(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, threads: int, min_run_time: float = 0.2) -> float:
    """The median seconds of one call, warm, at a fixed thread count (torch.utils.benchmark)."""
    with torch.no_grad():
        fn(x)  # warm-up
        timer = benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": x}, num_threads=threads)
        return timer.blocked_autorange(min_run_time=min_run_time).median


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's Linear / Conv2d modules by name (the mask's keys without `.weight`), in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHTED)]


def layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each Linear / Conv2d module of the model receives for `x` (its first call), by module name:
    caught by hooks, so that any architecture gives its layers, not only a chain."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in weighted_layers(model):
        def keep(_: nn.Module, args: tuple, name: str = name) -> None:
            inputs.setdefault(name, args[0])
        hooks.append(module.register_forward_pre_hook(keep))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


def sparse_layer(layer: nn.Module, layout: str) -> nn.Module:
    """A Linear / Conv2d layer with its weight as a sparse matrix (ValueError: a convolution it cannot take)."""
    return SparseLinear(layer, layout) if isinstance(layer, nn.Linear) else SparseConv2d(layer, layout)


def sparse_copy(model: nn.Module, layout: str) -> nn.Module:
    """The model with every Linear / Conv2d weight held as a sparse matrix: sparse_form for a chain; for any
    other architecture, a deep copy whose Linear / Conv2d modules are swapped for their sparse versions (the
    model's own forward then runs them). ValueError: a layer the sparse form cannot take (grouped conv, ...)."""
    if isinstance(model, nn.Sequential):
        return sparse_form(model, layout)
    if isinstance(model, WEIGHTED):
        return sparse_layer(model, layout)
    swapped = copy.deepcopy(model).eval()
    for name, layer in weighted_layers(swapped):
        parent, _, child = name.rpartition(".")
        setattr(swapped.get_submodule(parent), child, sparse_layer(layer, layout))
    return swapped


def compare_forms(masked: nn.Sequential, compact: nn.Sequential, x1: torch.Tensor, x256: torch.Tensor,
                  threads: int = 1) -> list[dict]:
    """Whole-network rows per form: latency at batch 1 (ms), throughput at batch 256 (examples/s), weight
    bytes, and the largest output difference from the dense form on the batch of 256."""
    forms = {"dense": masked, "compact": compact, **{layout: sparse_form(masked, layout) for layout in SPARSE_LAYOUTS}}
    with torch.no_grad():
        reference = masked(x256)
        rows = []
        for name, form in forms.items():
            rows.append({"form": name, "latency_ms": 1e3 * seconds(form, x1, threads),
                         "throughput": len(x256) / seconds(form, x256, threads),
                         "weight_bytes": weight_bytes(form),
                         "max_difference": float((form(x256) - reference).abs().max())})
    return rows


@dataclass
class Form:
    """One way to run the network: a runtime (pytorch, onnxruntime), the form of its weights (dense, compact,
    csr, bsr), a precision (fp32, int8), and `runner(threads)`: a function from a batch to its outputs on that
    many threads (an ONNX Runtime session fixes its threads when it is made; PyTorch's follow the process)."""

    runtime: str
    form: str
    precision: str
    runner: Callable[[int], Callable[[torch.Tensor], torch.Tensor]]
    weight_bytes: int

    @property
    def label(self) -> str:
        """How tables name it: the PyTorch forms by their old names (dense, compact, csr, bsr)."""
        if self.runtime == "pytorch":
            return self.form if self.precision == "fp32" else f"{self.form} {self.precision}"
        return f"ort {self.form}" + ("" if self.precision == "fp32" else f" {self.precision}")


def pytorch_form(form: str, module: nn.Module) -> Form:
    return Form("pytorch", form, "fp32", lambda threads: module, weight_bytes(module))


def accuracy(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Top-1 accuracy of `run` on (x, y), a batch at a time."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            correct += int((run(x[start:start + batch]).argmax(-1) == y[start:start + batch]).sum())
    return correct / max(len(x), 1)


def measure_forms(forms: list[Form], x1: torch.Tensor, x256: torch.Tensor, thread_counts: Sequence[int],
                  test: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[list[dict], list[dict]]:
    """Every form at every thread count: latency at batch 1 (ms), throughput at the full batch `x256`
    (examples/s), and, once per form (at the most threads), its outputs against the first form's (the dense
    reference) on the full batch (largest difference, share of equal top-1 predictions) and its accuracy on
    `test` (None: no test set at hand).
    Returns (rows, skipped): a form that fails to run is skipped with its reason, never the whole measurement."""
    rows: list[dict] = []
    skipped: list[dict] = []
    checked: dict[str, dict] = {}
    reference = None
    most = max(thread_counts)
    previous = torch.get_num_threads()
    try:  # the caller's thread count comes back: it decides the last bits of whatever trains next in the process
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for form in forms:
                if any(s["form"] == form.label for s in skipped):
                    continue
                try:
                    run = form.runner(threads)
                    with torch.no_grad():
                        outputs = run(x256).float()
                except Exception as exc:  # noqa: BLE001 - one form that cannot run says why; the others go on
                    if reference is None:
                        raise  # the reference itself: nothing to compare with
                    skipped.append({"form": form.label, "reason": first_line(exc)})
                    continue
                if reference is None:
                    reference = outputs
                if threads == most:  # accuracy once per form, where it is quickest
                    checked[form.label] = {
                        "max_difference": float((outputs - reference).abs().max()),
                        "agreement": float((outputs.argmax(-1) == reference.argmax(-1)).float().mean()),
                        "accuracy": None if test is None else accuracy(run, *test)}
                rows.append({"label": form.label, "runtime": form.runtime, "form": form.form,
                             "precision": form.precision, "threads": threads,
                             "latency_ms": 1e3 * seconds(run, x1, threads),
                             "throughput": len(x256) / seconds(run, x256, threads),
                             "weight_bytes": form.weight_bytes})
    finally:
        torch.set_num_threads(previous)
    rows = [{**row, **checked[row["label"]]} for row in rows if row["label"] in checked]  # not one that failed later
    return rows, skipped


def first_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def compare_layers(model: nn.Module, x1: torch.Tensor, x256: torch.Tensor, threads: int = 1,
                   with_break_even: bool = False) -> list[dict]:
    """Per Linear / Conv2d layer of any model (by module name): dense vs CSR vs BSR at batch 1 and 256 (ms per
    call; None: a layout this layer cannot take), with its density; `with_break_even`: also `break_even_b1`
    and `break_even_b256` (see break_even)."""
    rows = []
    inputs1, inputs256 = layer_inputs(model, x1), layer_inputs(model, x256)
    for name, layer in weighted_layers(model):
        if name not in inputs1:
            continue  # never called by the forward
        row = {"layer": name, "kind": type(layer).__name__, "shape": list(layer.weight.shape),
               "density": float(layer.weight.ne(0).float().mean())}
        for layout in ("dense", *SPARSE_LAYOUTS):
            try:
                form = layer if layout == "dense" else sparse_layer(layer, layout)
            except ValueError:
                row[f"{layout}_ms_b1"] = row[f"{layout}_ms_b256"] = None
                continue
            row[f"{layout}_ms_b1"] = 1e3 * seconds(form, inputs1[name], threads, 0.1)
            row[f"{layout}_ms_b256"] = 1e3 * seconds(form, inputs256[name], threads, 0.1)
        if with_break_even:
            row["break_even_b1"] = break_even(layer, inputs1[name], threads)
            row["break_even_b256"] = break_even(layer, inputs256[name], threads)
        rows.append(row)
    return rows


def break_even(layer: nn.Module, x: torch.Tensor, threads: int = 1, densities: tuple[float, ...] = DENSITIES,
               seed: int = 0) -> dict[str, float | None]:
    """Per sparse layout, the break-even density: the largest of `densities` up to which (from the
    sparsest up) a layer of this shape with random weights of that density runs faster than dense on `x`.
    None: slower already at the sparsest."""
    generator = torch.Generator().manual_seed(seed)
    dense_time = seconds(layer, x, threads, 0.1)
    found: dict[str, float | None] = {layout: None for layout in SPARSE_LAYOUTS}
    still = set(SPARSE_LAYOUTS)
    for density in sorted(densities):
        probe = copy.deepcopy(layer)  # the layer's shape, with weights of exactly this random density
        with torch.no_grad():
            keep = torch.rand(layer.weight.shape, generator=generator) < density
            probe.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * keep)
        for layout in sorted(still):
            try:
                sparse = sparse_layer(probe, layout)
            except ValueError:  # a convolution the sparse form cannot take: it never breaks even
                still.discard(layout)
                continue
            if seconds(sparse, x, threads, 0.1) < dense_time:
                found[layout] = density
            else:
                still.discard(layout)
        if not still:
            break
    return found
