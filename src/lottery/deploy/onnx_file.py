"""Writing a model as ONNX: torch's exporter with a dynamic batch dimension, its chatter kept out of the user's
way, and a failed write reported as the OSError it is (so that atomic_output names the file)."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
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
