"""From a ticket file to a model to deploy: the masked model, its compact form, and ONNX."""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lottery.deploy.compact import Size, chain_of, compact, size_of
from lottery.config import DataConfig, ModelConfig
from lottery.data import Dataset, load_data
from lottery.errors import UserError
from lottery.deploy.export import Ticket, Weights, load_ticket, read_ticket
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
    batch = torch.export.Dim("batch", min=1)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it lists the torchvision operators it skips: not ours to show
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # from the exporter's own pytree calls
            torch.onnx.export(model, (example,), str(out), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    finally:
        exporter_log.setLevel(level)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": example.numpy()})[0])
    with torch.no_grad():
        return float((got - model(example)).abs().max())


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
        return (lambda: build_model(config, shape, classes)), None
    data = load_data(DataConfig(**{k: v for k, v in ticket.info["data"].items()}), data_dir)
    return (lambda: build_model(config, data.input_shape, data.num_classes, data.graph)), data


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


def ticket_markdown(m: dict) -> str:
    info, before, after = m["info"], m["before"], m["after"]
    source = info["source"]
    lines = [f"### {m['name']}", "",
             f"{source['preset']} level {source['level']}, {info['percent_remaining']:.2f}% of "
             f"{info['prunable_weights']:,} prunable weights remaining; {m['threads']} thread(s), "
             f"torch {torch.__version__}, medians of torch.utils.benchmark, on {m.get('inputs', 'its test set')}.", "",
             f"Parameters {before.parameters:,} ({before.nonzero_parameters:,} nonzero); compact "
             f"{after.parameters:,}. FLOPs per example {before.flops:,} dense, {before.nonzero_flops:,} on kept "
             f"weights, {after.flops:,} compact.", "",
             "| form | latency, batch 1 (ms) | throughput, batch 256 (examples/s) | weight bytes | max abs diff vs dense |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['form']} | {r['latency_ms']:.3f} | {r['throughput']:,.0f} | {r['weight_bytes']:,} | "
              f"{r['max_difference']:.1e} |" for r in m["forms"]]
    lines += ["", "Per layer (ms per call; break-even: the largest density, of "
              "1/2/5/10/20/30/50%, up to which a random-mask layer of this shape beats dense):", "",
              "| layer | shape | density | dense b1 | CSR b1 | BSR b1 | dense b256 | CSR b256 | BSR b256 | "
              "CSR breaks even (b1 / b256) | BSR breaks even (b1 / b256) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in m["layers"]:
        cell = lambda layout: f"{_percent(r['break_even_b1'][layout])} / {_percent(r['break_even_b256'][layout])}"  # noqa: E731
        lines.append(f"| {r['layer']} {r['kind']} | {'x'.join(map(str, r['shape']))} | {100 * r['density']:.1f}% | "
                     f"{r['dense_ms_b1']:.3f} | {r['csr_ms_b1']:.3f} | {r['bsr_ms_b1']:.3f} | {r['dense_ms_b256']:.3f} | "
                     f"{r['csr_ms_b256']:.3f} | {r['bsr_ms_b256']:.3f} | {cell('csr')} | {cell('bsr')} |")
    if not torch.cuda.is_available():
        lines += ["", "Semi-structured 2:4 sparsity needs a CUDA GPU with sparse tensor cores and a 2:4 mask: not "
                  "measured here."]
    return "\n".join(lines)


def bench_ticket(path: Path | str, threads: int = 1, data_dir: Path | str | None = None) -> str:
    """`lottery bench-inference`: measure_ticket as markdown."""
    return ticket_markdown(measure_ticket(path, threads, data_dir))


def _percent(density: float | None) -> str:
    return "never" if density is None else f"{100 * density:g}%"
