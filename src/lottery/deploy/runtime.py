"""A ticket's network under ONNX Runtime: float32 as exported, and int8 from onnxruntime.quantization.

Deployment rarely runs PyTorch: the question "which form is fastest here" has to include the runtime a model
ships in. onnxruntime (the `export` extra) is imported only here and only when asked, so that a lottery
without it still measures its PyTorch forms and says in one line why these are missing.

int8: a model whose weights are all in Linear layers gets dynamic quantization (weights int8 ahead of time,
activations quantized per call: no calibration needed, what ORT recommends for fully-connected and
transformer models); a model with convolutions gets static quantization (QDQ, per-channel weights, activation
ranges calibrated on examples the caller gives), the form ORT's CPU kernels fuse into integer convolutions.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CALIBRATION_BATCH = 32


def onnxruntime_missing() -> str | None:
    """None when ONNX export and ONNX Runtime can run here; else the one line that says what to install."""
    for module in ("onnxruntime", "onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install 'lottery[export]'): ONNX Runtime forms not timed"
    return None


def export_float(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """`model` as float32 ONNX at `path` (a dynamic batch dimension), through the exporter `lottery export` uses."""
    from lottery.deploy import onnx_file  # the module, not the name: a test replaces its exporter

    onnx_file.export_onnx(model.eval(), example, path)
    return path


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, CONVOLUTIONS) for m in model.modules())


def quantize_int8(float_path: Path, out: Path, convolutions: bool, calibration: torch.Tensor) -> str:
    """`float_path` quantized to int8 at `out`; returns how, in words. `calibration`: the inputs whose
    activation ranges static quantization fixes (unused by dynamic quantization)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(out.stem + "-prepared.onnx")
    with _quiet():
        # ORT's own pre-processing: shape inference, and BatchNorm folded into the convolution before it, which
        # the QDQ nodes would otherwise keep apart (a float BatchNorm between two integer convolutions).
        quant_pre_process(str(float_path), str(prepared))
        if not convolutions:
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)
            return "dynamic (int8 weights, activations quantized per call)"

        class Batches(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{"input": calibration[i:i + CALIBRATION_BATCH].numpy()}
                                     for i in range(0, len(calibration), CALIBRATION_BATCH)])

            def get_next(self) -> dict | None:
                return next(self.batches, None)

        # S8S8 in QDQ: what ORT's documentation names the first choice on CPUs.
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return "static (QDQ, per-channel int8 weights, int8 activations)"


def runner(path: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from a batch to its outputs through an ONNX Runtime session of `path` on `threads` threads
    (intra-op; one inter-op thread), every graph optimization on."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its notes on unused initializers are not the user's to read
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return run


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs each step on the root logger at INFO/WARNING: not the user's to read."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def onnx_forms(dense: nn.Module, compact: nn.Module | None, example: torch.Tensor, calibration: torch.Tensor,
               folder: Path) -> tuple[list, list[dict], str | None]:
    """The ONNX Runtime forms of a ticket's network, written under `folder` (which must outlive their use):
    dense and compact in float32, and int8 of the compact form (of dense when there is no compact form).
    Returns (forms, skipped: [{form, reason}], how int8 was made). A model the exporter or the quantizer
    cannot take is skipped with its reason, so that the PyTorch forms are still measured."""
    from lottery.deploy.inference import Form, first_line

    missing = onnxruntime_missing()
    if missing is not None:
        return [], [{"form": "onnxruntime", "reason": missing}], None
    forms: list[Form] = []
    skipped: list[dict] = []
    exported: dict[str, tuple[nn.Module, Path]] = {}
    for name, model in (("dense", dense), ("compact", compact)):
        if model is None:
            continue
        path = folder / f"{name}.onnx"
        try:
            export_float(model, example, path)
        except Exception as exc:  # noqa: BLE001 - a model torch.onnx cannot export: said, the rest measured
            skipped.append({"form": f"ort {name}", "reason": f"torch.onnx.export failed: {first_line(exc)}"})
            continue
        exported[name] = (model, path)
        forms.append(Form("onnxruntime", name, "fp32", functools.partial(runner, path), path.stat().st_size))
    source = "compact" if "compact" in exported else "dense" if "dense" in exported else None
    if source is None:
        return forms, skipped, None
    model, path = exported[source]
    out = folder / f"{source}-int8.onnx"
    try:
        how = quantize_int8(path, out, has_convolutions(model), calibration)
    except Exception as exc:  # noqa: BLE001 - an operator the quantizer cannot take: said, the rest measured
        skipped.append({"form": f"ort {source} int8", "reason": f"quantization failed: {first_line(exc)}"})
        return forms, skipped, None
    forms.append(Form("onnxruntime", source, "int8", functools.partial(runner, out), out.stat().st_size))
    return forms, skipped, how

