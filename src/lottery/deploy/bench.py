"""From a ticket file to a model to deploy: the masked model, its compact form, and ONNX."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lottery.deploy.compact import Size, chain_of, compact, size_of
from lottery.config import DataConfig, ModelConfig
from lottery.data import Dataset, load_data
from lottery.errors import UserError
from lottery.deploy.export import Ticket, Weights, invalid, load_ticket, read_ticket
from lottery.deploy.onnx_file import export_onnx
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
        export_onnx(model, example, tmp)
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
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


FULL_BATCH = 256  # the batch whose throughput is timed (with batch 1's latency); tests time fewer


def thread_counts(threads: int | Sequence[int] | None = None) -> list[int]:
    """The thread counts to measure at, in order, each once: by default 1 and the process's own
    (torch.get_num_threads(): OMP_NUM_THREADS when set, else torch's choice of cores)."""
    counts = [1, torch.get_num_threads()] if threads is None else [threads] if isinstance(threads, int) else threads
    if not counts or any(not isinstance(t, int) or t < 1 for t in counts):
        raise UserError(f"thread counts must be whole numbers of at least 1, got {list(counts)}")
    return list(dict.fromkeys(counts))


def measure_ticket(path: Path | str, threads: int | Sequence[int] | None = None,
                   data_dir: Path | str | None = None, batch: int | None = None) -> dict:
    """The ticket's network in every form it can take, at every thread count (thread_counts): PyTorch dense,
    compact (compact_for_export: what `lottery export --format onnx` ships), CSR and BSR; ONNX Runtime dense
    and compact in float32 and int8 (lottery.deploy.runtime). Each form timed, checked against dense and,
    when the data is at hand, its accuracy on the test set; per-layer rows with their break-even densities.
    A form that cannot be made or run is skipped with its reason (`skipped`), never the whole measurement.
    `batch`: the full batch (default FULL_BATCH, 256); batch 1 is always timed too."""
    from lottery.deploy.inference import (SPARSE_LAYOUTS, compare_layers, first_line, measure_forms, pytorch_form,
                                          sparse_copy)
    from lottery.deploy.runtime import onnx_forms

    counts = thread_counts(threads)
    ticket = read_ticket(path)
    model_fn, data = model_for(ticket, data_dir)
    previous = torch.get_num_threads()
    try:  # the caller's thread count comes back: it decides the last bits of whatever trains next in the process
        x_full = example_inputs(ticket, data, batch or FULL_BATCH)
        x1 = x_full[:1]
        masked = model_fn()
        load_ticket(ticket, masked)
        masked.eval()
        skipped: list[dict] = []
        try:
            small: ExportForm | None = compact_for_export(ticket, model_fn(), x_full)
        except Exception as exc:  # noqa: BLE001 - no compact form: the others are still measured
            small = None
            skipped.append({"form": "compact", "reason": first_line(exc)})
        forms = [pytorch_form("dense", masked)] + ([pytorch_form("compact", small.model)] if small else [])
        for layout in SPARSE_LAYOUTS:
            try:
                forms.append(pytorch_form(layout, sparse_copy(masked, layout)))
            except Exception as exc:  # noqa: BLE001 - a layer the sparse form cannot take (a grouped conv, ...)
                skipped.append({"form": layout, "reason": first_line(exc)})
        calibration, calibrated_on = _calibration(data, x_full)
        test = None if data is None else (data.features(data.x_test), data.y_test)
        with tempfile.TemporaryDirectory(prefix="lottery-bench-") as folder:
            ort, ort_skipped, int8 = onnx_forms(masked, small.model if small else None, x_full, calibration,
                                                Path(folder))
            rows, failed = measure_forms(forms + ort, x1, x_full, counts, test)
        layers = []
        for count in counts:
            torch.set_num_threads(count)
            layers += [{**row, "threads": count}
                       for row in compare_layers(masked, x1, x_full, count, with_break_even=True)]
    finally:
        torch.set_num_threads(previous)
    onnxruntime = sys.modules.get("onnxruntime")
    return {"name": Path(path).name, "info": ticket.info, "batch": len(x_full), "threads": counts[0],
            "thread_counts": counts, "cpus": os.cpu_count(), "before": small.before if small else None,
            "after": small.after if small else None,
            "compact": {"method": small.method, "note": small.note} if small else None,
            "inputs": "its test set" if data is not None else "standard-normal inputs of its recorded shape",
            "accuracy_on": None if test is None else f"the test set's {len(test[1]):,} examples",
            "int8": int8, "calibration": calibrated_on if int8 and "static" in int8 else None,
            "onnxruntime": getattr(onnxruntime, "__version__", None),
            "forms": [{**r, "form": r["label"], "base_form": r["form"]} for r in rows],
            "skipped": skipped + ort_skipped + failed, "layers": layers}


def _calibration(data: Dataset | None, inputs: torch.Tensor, count: int = 256) -> tuple[torch.Tensor, str]:
    """What static int8 quantization calibrates its activation ranges on: the first training examples (never
    the test set it is then scored on), else the inputs timed, and which it was, in words."""
    if data is not None and len(data.x_train):
        return data.features(data.x_train[:count]).cpu(), f"the first {min(count, len(data.x_train))} training examples"
    return inputs[:count], f"the {len(inputs[:count])} {'test' if data is not None else 'standard-normal'} inputs timed"


def bench_data(m: dict, tolerance: float = 0.5) -> dict:
    """measure_ticket's result as plain data (JSON-able): the ticket, the sizes, and the timings as rows.

    `forms`: one row per (runtime, form, precision, batch, threads) for the whole network: runtime (pytorch,
    onnxruntime), form (dense, compact, csr, bsr), precision (fp32, int8), label (how tables name it),
    milliseconds (the median of one call), examples_per_second, weight_bytes (an ONNX form: its file),
    accuracy (on the test set, in [0, 1]; None without data), accuracy_delta (accuracy minus PyTorch dense's),
    max_difference and agreement (largest output difference, share of equal top-1 predictions, against dense
    on the full batch). `skipped`: forms not measured, with the reason. `layers`: one row per (Linear /
    Conv2d layer, form, batch, threads): layer (its module name), kind, shape, density, form, batch, threads,
    milliseconds (None: a layout the layer cannot take). `break_even`: one row per (layer, sparse layout,
    batch, threads): the largest density up to which that layout beats dense (None: never). `verdict`: see
    verdict_of. `cuda_available`: False says 2:4 semi-structured sparsity (a CUDA GPU's) was not measured."""
    from lottery.deploy.inference import SPARSE_LAYOUTS

    info, full = m["info"], m.get("batch", FULL_BATCH)
    dense = {r["threads"]: r for r in m["forms"] if r["runtime"] == "pytorch" and r["base_form"] == "dense"}
    forms = []
    for r in m["forms"]:
        reference = dense[r["threads"]]["accuracy"]
        same = {"runtime": r["runtime"], "form": r["base_form"], "precision": r["precision"], "label": r["form"],
                "threads": r["threads"], "weight_bytes": r["weight_bytes"], "accuracy": r["accuracy"],
                "accuracy_delta": None if r["accuracy"] is None else r["accuracy"] - reference,
                "max_difference": r["max_difference"], "agreement": r["agreement"]}
        forms.append({**same, "batch": 1, "milliseconds": r["latency_ms"],
                      "examples_per_second": 1e3 / r["latency_ms"]})
        forms.append({**same, "batch": full, "milliseconds": full * 1e3 / r["throughput"],
                      "examples_per_second": r["throughput"]})
    layers, break_even = [], []
    for r in m["layers"]:
        layer = {"layer": r["layer"], "kind": r["kind"], "shape": list(r["shape"]), "density": r["density"]}
        for form in ("dense", *SPARSE_LAYOUTS):
            for batch, key in ((1, "b1"), (full, "b256")):  # b256: the full batch
                layers.append({**layer, "form": form, "batch": batch, "threads": r["threads"],
                               "milliseconds": r[f"{form}_ms_{key}"]})
        for form in SPARSE_LAYOUTS:
            for batch, key in ((1, "b1"), (full, "b256")):
                found = r.get(f"break_even_{key}")
                if found is not None:
                    break_even.append({"layer": r["layer"], "form": form, "batch": batch, "threads": r["threads"],
                                       "density": found[form]})
    sizes = {"dense": None if m["before"] is None else dataclasses.asdict(m["before"]),
             "compact": None if m["after"] is None else dataclasses.asdict(m["after"])}
    d = {"ticket": m["name"], "source": info["source"], "percent_remaining": info["percent_remaining"],
         "prunable_weights": info["prunable_weights"], "batch": full, "threads": m["threads"],
         "thread_counts": m["thread_counts"],
         "cpus": m["cpus"], "torch": torch.__version__, "onnxruntime": m["onnxruntime"],
         "inputs": m.get("inputs", "its test set"), "accuracy_on": m["accuracy_on"], "sizes": sizes,
         "compact": m["compact"], "int8": m["int8"], "calibration": m["calibration"], "forms": forms,
         "skipped": m["skipped"], "layers": layers, "break_even": break_even,
         "cuda_available": torch.cuda.is_available()}
    return {**d, "verdict": verdict_of(d, tolerance)}


def verdict_of(d: dict, tolerance: float = 0.5) -> dict:
    """Which form to run, from bench_data's rows. `settings`: per (batch, threads), the fastest form, its
    speed-up over PyTorch dense, its accuracy and dense's, whether it is within `tolerance` points of dense
    (None: accuracy not measured: then `agreement`, the share of top-1 predictions equal to dense's on the
    `compared_on` inputs, and `max_difference` say how far it is), and, when it is not, the fastest form that is. `layers`: per (layer, batch,
    threads), the layer's density, each sparse layout's measured break-even density, and `keep`: dense, or the
    layout whose break-even the layer's density is at or below (the faster of the two when both are)."""
    if not tolerance >= 0:
        raise UserError(f"--tolerance must be 0 or more points, got {tolerance}")
    settings = []
    for batch, threads in dict.fromkeys((r["batch"], r["threads"]) for r in d["forms"]):
        rows = [r for r in d["forms"] if (r["batch"], r["threads"]) == (batch, threads)]
        dense = next(r for r in rows if r["runtime"] == "pytorch" and r["form"] == "dense")

        def within(r: dict) -> bool | None:
            return None if r["accuracy_delta"] is None else 100 * r["accuracy_delta"] >= -tolerance - 1e-9

        def choice(r: dict) -> dict:
            return {"runtime": r["runtime"], "form": r["form"], "precision": r["precision"], "label": r["label"],
                    "speedup": r["examples_per_second"] / dense["examples_per_second"]}

        fastest = max(rows, key=lambda r: r["examples_per_second"])
        safe = max((r for r in rows if within(r) is not False), key=lambda r: r["examples_per_second"])
        settings.append({"batch": batch, "threads": threads, "fastest": choice(fastest),
                         "accuracy": fastest["accuracy"], "dense_accuracy": dense["accuracy"],
                         "accuracy_delta": fastest["accuracy_delta"], "within_tolerance": within(fastest),
                         "max_difference": fastest["max_difference"], "agreement": fastest["agreement"],
                         "fastest_within_tolerance": None if within(fastest) is not False else choice(safe)})
    times = {(r["layer"], r["form"], r["batch"], r["threads"]): r["milliseconds"] for r in d["layers"]}
    even = {(r["layer"], r["form"], r["batch"], r["threads"]): r["density"] for r in d["break_even"]}
    layers = []
    for r in {(r["layer"], r["batch"], r["threads"]): r for r in d["layers"]}.values():
        key = (r["layer"], r["batch"], r["threads"])
        found = {layout: even.get((key[0], layout, *key[1:])) for layout in ("csr", "bsr")}
        paying = [layout for layout, density in found.items() if density is not None and r["density"] <= density]
        keep = min(paying, key=lambda layout: times[(key[0], layout, *key[1:])] or math.inf) if paying else "dense"
        layers.append({"layer": r["layer"], "kind": r["kind"], "density": r["density"], "batch": r["batch"],
                       "threads": r["threads"], "csr_break_even": found["csr"], "bsr_break_even": found["bsr"],
                       "keep": keep})
    return {"tolerance_points": tolerance, "accuracy_measured": d["accuracy_on"] is not None,
            "compared_on": d["batch"], "settings": settings, "layers": layers}


def bench_markdown(d: dict) -> str:
    """The markdown `lottery bench-inference` prints: bench_data's tables, one per thread count, and the
    verdict last."""
    source, before, after = d["source"], d["sizes"]["dense"], d["sizes"]["compact"]
    counts, full = d.get("thread_counts", [d["threads"]]), d.get("batch", FULL_BATCH)
    runtime = f", onnxruntime {d['onnxruntime']}" if d.get("onnxruntime") else ""
    cpus = f" ({d['cpus']} CPUs)" if d.get("cpus") else ""
    lines = [f"### {d['ticket']}", "",
             f"{source['preset']} level {source['level']}, {d['percent_remaining']:.2f}% of "
             f"{d['prunable_weights']:,} prunable weights remaining; {_threads(counts)}{cpus}, "
             f"torch {d['torch']}{runtime}, medians of torch.utils.benchmark, on {d['inputs']}.", ""]
    if before and after:
        lines += [f"Parameters {before['parameters']:,} ({before['nonzero_parameters']:,} nonzero); compact "
                  f"{after['parameters']:,}. FLOPs per example {before['flops']:,} dense, {before['nonzero_flops']:,} "
                  f"on kept weights, {after['flops']:,} compact.", ""]
    notes = []
    if d.get("compact"):
        notes.append(f"Compact ({d['compact']['method']}): {d['compact']['note']}.")
    if d.get("int8"):
        calibrated = f", calibrated on {d['calibration']}" if d.get("calibration") else ""
        notes.append(f"int8: {d['int8']}{calibrated}.")
    notes.append(f"Accuracy on {d['accuracy_on']}." if d.get("accuracy_on") else
                 "Accuracy not measured (no test set at hand: --data-dir); outputs compared with dense instead.")
    notes += [f"Not measured: {s['form']}: {s['reason']}" for s in d.get("skipped", [])]
    lines += [" ".join(notes[:3]), *[f"- {n}" for n in notes[3:]], ""]
    forms = {(r["label"], r["batch"], r["threads"]): r for r in d["forms"]}
    for threads in counts:
        lines += [f"On {_threads([threads])}:", "",
                  f"| form | latency, batch 1 (ms) | throughput, batch {full} (examples/s) | weight bytes | "
                  f"max abs diff vs dense | agrees with dense | accuracy | vs dense (points) | speed-up b1 / b{full} |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        dense1, dense256 = forms[("dense", 1, threads)], forms[("dense", full, threads)]
        for name in dict.fromkeys(r["label"] for r in d["forms"] if r["threads"] == threads):
            one, many = forms[(name, 1, threads)], forms[(name, full, threads)]
            accuracy = "—" if one["accuracy"] is None else f"{100 * one['accuracy']:.2f}%"
            delta = "—" if one["accuracy_delta"] is None else f"{100 * one['accuracy_delta']:+.2f}"
            lines.append(f"| {name} | {one['milliseconds']:.3f} | {many['examples_per_second']:,.0f} | "
                         f"{one['weight_bytes']:,} | {one['max_difference']:.1e} | {100 * one['agreement']:.1f}% | "
                         f"{accuracy} | {delta} | {dense1['milliseconds'] / one['milliseconds']:.2f}× / "
                         f"{many['examples_per_second'] / dense256['examples_per_second']:.2f}× |")
        lines.append("")
    lines += ["Per layer (ms per call; break-even: the largest density, of "
              "1/2/5/10/20/30/50%, up to which a random-mask layer of this shape beats dense):", "",
              f"| layer | threads | shape | density | dense b1 | CSR b1 | BSR b1 | dense b{full} | CSR b{full} | "
              f"BSR b{full} | "
              f"CSR breaks even (b1 / b{full}) | BSR breaks even (b1 / b{full}) |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    times = {(r["layer"], r["form"], r["batch"], r["threads"]): r["milliseconds"] for r in d["layers"]}
    even = {(r["layer"], r["form"], r["batch"], r["threads"]): r["density"] for r in d["break_even"]}
    for layer in {(r["layer"], r["threads"]): r for r in d["layers"]}.values():
        i, t = layer["layer"], layer["threads"]
        cell = lambda form: (f"{_percent(even.get((i, form, 1, t)))} / "  # noqa: E731
                             f"{_percent(even.get((i, form, full, t)))}")
        lines.append(f"| {i} {layer['kind']} | {t} | {'x'.join(map(str, layer['shape']))} | "
                     f"{100 * layer['density']:.1f}% | "
                     + " | ".join(_ms(times[(i, form, batch, t)]) for batch in (1, full)
                                  for form in ("dense", "csr", "bsr"))
                     + f" | {cell('csr')} | {cell('bsr')} |")
    if not d["cuda_available"]:
        lines += ["", "Semi-structured 2:4 sparsity needs a CUDA GPU with sparse tensor cores and a 2:4 mask: not "
                  "measured here."]
    return "\n".join(lines + ["", *verdict_markdown(d["verdict"])])


def verdict_markdown(verdict: dict) -> list[str]:
    """The verdict in a few lines: per (batch, threads) the fastest form and what it costs in accuracy; per
    thread count and batch, the layers a sparse layout pays for (every other layer stays dense)."""
    tolerance = verdict["tolerance_points"]
    lines = [f"**Verdict** (fastest form per batch and thread count; within {tolerance:g} points of dense's "
             f"accuracy counts as matching):"]
    for s in verdict["settings"]:
        fastest = s["fastest"]
        head = f"- batch {s['batch']}, {_threads([s['threads']])}: {fastest['label']}, {fastest['speedup']:.2f}× dense"
        if s["within_tolerance"] is None:
            lines.append(f"{head}; accuracy not measured, top-1 agrees with dense on {100 * s['agreement']:.1f}% "
                         f"of {verdict['compared_on']} inputs (max |diff| {s['max_difference']:.1e}).")
            continue
        lines.append(f"{head}; accuracy {100 * s['accuracy']:.2f}% vs {100 * s['dense_accuracy']:.2f}% "
                     f"({100 * s['accuracy_delta']:+.2f} points): "
                     + ("within tolerance." if s["within_tolerance"] else
                        f"outside tolerance; fastest within it: {s['fastest_within_tolerance']['label']}, "
                        f"{s['fastest_within_tolerance']['speedup']:.2f}×."))
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in verdict["layers"]:
        groups.setdefault((r["threads"], r["batch"]), []).append(r)
    for (threads, batch), rows in groups.items():
        paying = [f"{r['layer']} as {r['keep'].upper()} ({100 * r['density']:.1f}% ≤ "
                  f"{_percent(r[r['keep'] + '_break_even'])})" for r in rows if r["keep"] != "dense"]
        lines.append(f"- layers, batch {batch}, {_threads([threads])}: "
                     + (f"{', '.join(paying)}; the rest stay dense." if paying else
                        "every layer stays dense (its density is above the measured break-even)."))
    return lines


def ticket_markdown(m: dict) -> str:
    """measure_ticket's result as markdown (bench_markdown of bench_data)."""
    return bench_markdown(bench_data(m))


def bench_ticket(path: Path | str, threads: int | Sequence[int] | None = None, data_dir: Path | str | None = None,
                 tolerance: float = 0.5) -> dict:
    """`lottery bench-inference`: measure_ticket as data (bench_data); bench_markdown renders it."""
    if not tolerance >= 0:  # before minutes of measuring
        raise UserError(f"--tolerance must be 0 or more points, got {tolerance}")
    return bench_data(measure_ticket(path, threads, data_dir), tolerance)


def _threads(counts: Sequence[int]) -> str:
    return ", ".join(map(str, counts)) + (" thread" if list(counts) == [1] else " threads")


def _ms(milliseconds: float | None) -> str:
    return "—" if milliseconds is None else f"{milliseconds:.3f}"


def _percent(density: float | None) -> str:
    return "never" if density is None else f"{100 * density:g}%"
