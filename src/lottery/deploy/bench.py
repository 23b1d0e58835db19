"""From a ticket file to a model to deploy: the masked model, its compact form, and ONNX."""
from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lottery.deploy.compact import Size, chain_of, compact, size_of
from lottery.config import DataConfig, ModelConfig
from lottery.data import Dataset, load_data
from lottery.errors import UserError
from lottery.deploy.export import Ticket, Weights, invalid, load_ticket, read_ticket
from lottery.storage.files import atomic_output, remove_stale_temps
from lottery.models import GRAPH_MODELS, MODELS, build_model


def masked_and_compact(ticket: Ticket, model: nn.Module, example: torch.Tensor,
                       weights: Weights = "trained") -> tuple[nn.Sequential, nn.Sequential, Size, Size]:
    """(the ticket's network as a chain of layers, its compact form, the size of each). `model` is a fresh
    module of the ticket's architecture; it receives the ticket's state."""
    load_ticket(ticket, model, weights)
    model.eval()
    masked = chain_of(model).eval()
    small = compact(model, ticket.mask, example)
    return masked, small, size_of(model, example, ticket.mask), size_of(small, example)


@dataclass
class ExportForm:
    """The smallest dense form of a ticket's network found for export, and how it was found."""

    model: nn.Module
    before: Size  # the masked network
    after: Size  # `model`
    method: str  # "chain" (lottery.deploy.compact), "depgraph" (lottery.deploy.structured) or "none" (uncut)
    note: str  # one line for the user


def compact_for_export(ticket: Ticket, model: nn.Module, example: torch.Tensor,
                       weights: Weights = "trained") -> ExportForm:
    """The ticket's network with its disconnected units removed, for any architecture (`model`: a fresh module
    of the ticket's architecture; it receives the ticket's state). A chain of layers keeps the chain compaction
    when it removes at least as many parameters (it also folds the constant units of an unstructured ticket
    into biases); otherwise the dependency-graph cut (residual adds, depthwise convs); a model neither can cut
    is exported as the masked model itself."""
    from lottery.deploy.structured import compact_model, parameter_count, size_of_any

    load_ticket(ticket, model, weights)
    model.eval()
    try:
        chain = compact(model, ticket.mask, example)
    except UserError:  # not a chain of layers: the dependency graph alone
        chain = None
    cut = compact_model(model, ticket.mask, example[:32])  # a few inputs trace it; to_onnx checks on all
    if chain is not None and parameter_count(chain) <= cut.parameters_after:
        return ExportForm(chain, size_of(model, example, ticket.mask), size_of(chain, example), "chain",
                          "units the mask disconnects removed from the chain of layers (constant ones folded)")
    return ExportForm(cut.model, size_of_any(model, example, ticket.mask), size_of_any(cut.model, example),
                      cut.method, cut.note)


def max_difference(a: Callable[[torch.Tensor], torch.Tensor], b: Callable[[torch.Tensor], torch.Tensor],
                   x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x).float() - b(x).float()).abs().max())


def to_onnx(model: nn.Module, example: torch.Tensor, out: Path | str) -> float:
    """Write `model` as ONNX (a dynamic batch dimension) and run it with onnxruntime on `example`; returns the
    largest difference from PyTorch's outputs."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'lottery[export]'") from None
    out = Path(out)
    model = model.eval()
    remove_stale_temps(out)  # what a killed export left beside `out`
    with atomic_output(out) as tmp:  # `out` appears whole, checked by onnxruntime, or not at all
        _export_onnx(model, example, tmp)
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": example.numpy()})[0])
    with torch.no_grad():
        return float((got - model(example)).abs().max())


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.onnx.export to `path`; a failed write (a full disk) is the OSError it is, whatever the exporter
    wrapped it in, so that atomic_output names the file."""
    batch = torch.export.Dim("batch", min=1)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it lists the torchvision operators it skips: not ours to show
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # from the exporter's own pytree calls
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001
        cause = next((e for e in _causes(exc) if isinstance(e, OSError)), None)
        if cause is not None:
            raise cause from None
        raise
    finally:
        exporter_log.setLevel(level)


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return seen


def model_for(ticket: Ticket, data_dir: Path | str | None = None) -> tuple[Callable[[], nn.Module], Dataset | None]:
    """A builder of the ticket's model (a registry model), and its dataset: loaded from `data_dir` when one is
    given (or when the ticket does not record its input shape); else None, the model built from the shape
    and classes the ticket recorded, with no dataset needed (nor a download)."""
    spec = {k: v for k, v in ticket.info["model"].items() if k != "class"}
    recorded = ticket.info["model"].get("class") or ""
    if spec.get("name") not in {**MODELS, **GRAPH_MODELS} or not recorded.startswith("lottery.models."):
        raise UserError(f"this ticket was made with your own module ({recorded or 'unknown'}): load it from Python, "
                        f"lottery.load_ticket(FILE, YourModel())")
    config = ModelConfig(**spec)
    inputs = ticket.info.get("inputs")
    if data_dir is None and inputs and spec["name"] not in GRAPH_MODELS:  # a graph model is built around its data
        shape, classes = tuple(inputs["input_shape"]), int(inputs["num_classes"])
        build, data = (lambda: build_model(config, shape, classes)), None
    else:
        data = load_data(DataConfig(**{k: v for k, v in ticket.info["data"].items()}), data_dir)
        build = lambda: build_model(config, data.input_shape, data.num_classes, data.graph)  # noqa: E731
    check_builds_the_ticket(ticket, build)
    return build, data


def check_builds_the_ticket(ticket: Ticket, build: Callable[[], nn.Module]) -> None:
    """The model the ticket's metadata describes has exactly the ticket's tensors (names and shapes): built on
    the meta device first (no memory, no random draw), so that metadata that lies about a size is one line."""
    try:
        with torch.device("meta"):
            model = build()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the metadata describes no model that can be built
        raise invalid(ticket.path, f"its model cannot be built: {str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__}") from None
    ours = {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    theirs = {n: tuple(t.shape) for n, t in ticket.start.items()}
    if ours != theirs:
        differ = sorted(set(ours) ^ set(theirs)) or sorted(n for n in ours if ours[n] != theirs[n])
        name = differ[0]
        raise invalid(ticket.path, f"its metadata describes a model whose {name} is "
                                   f"{list(ours[name]) if name in ours else 'absent'}, the file's is "
                                   f"{list(theirs[name]) if name in theirs else 'absent'}")


def example_inputs(ticket: Ticket, data: Dataset | None, count: int = 256) -> torch.Tensor:
    """`count` inputs for timing and for comparing forms: the test set's first ones when the data is at hand,
    else standard-normal inputs of the recorded shape (a fixed seed): the products cost the same either way."""
    if data is not None:
        return data.features(data.x_test[:count]).cpu()
    shape = tuple(ticket.info["inputs"]["input_shape"])
    return torch.randn((count, *shape), generator=torch.Generator().manual_seed(0))


def measure_ticket(path: Path | str, threads: int = 1, data_dir: Path | str | None = None) -> dict:
    """The ticket's network in every form (lottery.deploy.inference) on its own test inputs: sizes, whole-network
    rows per form, per-layer rows with their break-even densities."""
    from lottery.deploy.inference import compare_forms, compare_layers

    ticket = read_ticket(path)
    model_fn, data = model_for(ticket, data_dir)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:  # the caller's thread count comes back: it decides the last bits of whatever trains next in the process
        x256 = example_inputs(ticket, data)
        masked, small, before, after = masked_and_compact(ticket, model_fn(), x256)
        x1 = x256[:1]
        layers = compare_layers(masked, x1, x256, threads, with_break_even=True)
        forms = compare_forms(masked, small, x1, x256, threads)
    finally:
        torch.set_num_threads(previous)
    return {"name": Path(path).name, "info": ticket.info, "threads": threads, "before": before, "after": after,
            "inputs": "its test set" if data is not None else "standard-normal inputs of its recorded shape",
            "forms": forms, "layers": layers}


def bench_data(m: dict) -> dict:
    """measure_ticket's result as plain data (JSON-able): the ticket, the sizes, and the timings as rows.

    `forms`: one row per (form, batch) for the whole network: form, batch, threads, milliseconds (the median
    of one call), examples_per_second, weight_bytes, max_difference (from dense, on the batch of 256).
    `layers`: one row per (Linear / Conv2d layer, form, batch): layer, kind, shape, density, form, batch,
    threads, milliseconds. `break_even`: one row per (layer, sparse layout, batch): the largest density up to
    which that layout beats dense (None: never). `cuda_available`: False says 2:4 semi-structured sparsity
    (a CUDA GPU's) was not measured."""
    from lottery.deploy.inference import SPARSE_LAYOUTS

    info, threads = m["info"], m["threads"]
    forms = []
    for r in m["forms"]:
        same = {"form": r["form"], "threads": threads, "weight_bytes": r["weight_bytes"],
                "max_difference": r["max_difference"]}
        forms.append({**same, "batch": 1, "milliseconds": r["latency_ms"], "examples_per_second": 1e3 / r["latency_ms"]})
        forms.append({**same, "batch": 256, "milliseconds": 256e3 / r["throughput"], "examples_per_second": r["throughput"]})
    layers, break_even = [], []
    for r in m["layers"]:
        layer = {"layer": r["layer"], "kind": r["kind"], "shape": list(r["shape"]), "density": r["density"]}
        for form in ("dense", *SPARSE_LAYOUTS):
            for batch in (1, 256):
                layers.append({**layer, "form": form, "batch": batch, "threads": threads,
                               "milliseconds": r[f"{form}_ms_b{batch}"]})
        for form in SPARSE_LAYOUTS:
            for batch in (1, 256):
                found = r.get(f"break_even_b{batch}")
                if found is not None:
                    break_even.append({"layer": r["layer"], "form": form, "batch": batch, "density": found[form]})
    return {"ticket": m["name"], "source": info["source"], "percent_remaining": info["percent_remaining"],
            "prunable_weights": info["prunable_weights"], "threads": threads, "torch": torch.__version__,
            "inputs": m.get("inputs", "its test set"), "sizes": {"dense": dataclasses.asdict(m["before"]),
                                                                 "compact": dataclasses.asdict(m["after"])},
            "forms": forms, "layers": layers, "break_even": break_even, "cuda_available": torch.cuda.is_available()}


def bench_markdown(d: dict) -> str:
    """The markdown `lottery bench-inference` prints: bench_data's tables."""
    source, before, after = d["source"], d["sizes"]["dense"], d["sizes"]["compact"]
    lines = [f"### {d['ticket']}", "",
             f"{source['preset']} level {source['level']}, {d['percent_remaining']:.2f}% of "
             f"{d['prunable_weights']:,} prunable weights remaining; {d['threads']} thread(s), "
             f"torch {d['torch']}, medians of torch.utils.benchmark, on {d['inputs']}.", "",
             f"Parameters {before['parameters']:,} ({before['nonzero_parameters']:,} nonzero); compact "
             f"{after['parameters']:,}. FLOPs per example {before['flops']:,} dense, {before['nonzero_flops']:,} on "
             f"kept weights, {after['flops']:,} compact.", "",
             "| form | latency, batch 1 (ms) | throughput, batch 256 (examples/s) | weight bytes | max abs diff vs dense |",
             "| --- | ---: | ---: | ---: | ---: |"]
    forms = {(r["form"], r["batch"]): r for r in d["forms"]}
    for name in dict.fromkeys(r["form"] for r in d["forms"]):
        one, many = forms[(name, 1)], forms[(name, 256)]
        lines.append(f"| {name} | {one['milliseconds']:.3f} | {many['examples_per_second']:,.0f} | "
                     f"{one['weight_bytes']:,} | {one['max_difference']:.1e} |")
    lines += ["", "Per layer (ms per call; break-even: the largest density, of "
              "1/2/5/10/20/30/50%, up to which a random-mask layer of this shape beats dense):", "",
              "| layer | shape | density | dense b1 | CSR b1 | BSR b1 | dense b256 | CSR b256 | BSR b256 | "
              "CSR breaks even (b1 / b256) | BSR breaks even (b1 / b256) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    times = {(r["layer"], r["form"], r["batch"]): r["milliseconds"] for r in d["layers"]}
    even = {(r["layer"], r["form"], r["batch"]): r["density"] for r in d["break_even"]}
    for layer in {r["layer"]: r for r in d["layers"]}.values():
        i = layer["layer"]
        cell = lambda form: f"{_percent(even.get((i, form, 1)))} / {_percent(even.get((i, form, 256)))}"  # noqa: E731
        lines.append(f"| {i} {layer['kind']} | {'x'.join(map(str, layer['shape']))} | {100 * layer['density']:.1f}% | "
                     + " | ".join(f"{times[(i, form, batch)]:.3f}" for batch in (1, 256) for form in ("dense", "csr", "bsr"))
                     + f" | {cell('csr')} | {cell('bsr')} |")
    if not d["cuda_available"]:
        lines += ["", "Semi-structured 2:4 sparsity needs a CUDA GPU with sparse tensor cores and a 2:4 mask: not "
                  "measured here."]
    return "\n".join(lines)


def ticket_markdown(m: dict) -> str:
    """measure_ticket's result as markdown (bench_markdown of bench_data)."""
    return bench_markdown(bench_data(m))


def bench_ticket(path: Path | str, threads: int = 1, data_dir: Path | str | None = None) -> dict:
    """`lottery bench-inference`: measure_ticket as data (bench_data); bench_markdown renders it."""
    return bench_data(measure_ticket(path, threads, data_dir))


def _percent(density: float | None) -> str:
    return "never" if density is None else f"{100 * density:g}%"
