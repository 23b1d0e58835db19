"""Model registry and the roles of prunable tensors. Any torch.nn.Module works from Python."""
from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from ..config import ModelConfig
from .conv import PLANS, ConvNet
from .mlp import MLP

ModelBuilder = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]


def _lenet300_100(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), [300, 100], num_classes, config.dropout)


def _mlp(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), list(config.hidden), num_classes, config.dropout)


def _conv(name: str) -> ModelBuilder:
    def build(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 3:
            from ..errors import UserError

            raise UserError(f"{name} needs images [C, H, W]; the data's inputs are {input_shape}")
        return ConvNet(PLANS[name], input_shape, num_classes)
    return build


MODELS: dict[str, ModelBuilder] = {
    "lenet300-100": _lenet300_100,
    "mlp": _mlp,
    "conv2": _conv("conv2"),
    "conv4": _conv("conv4"),
    "conv6": _conv("conv6"),
}

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def build_model(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MODELS[config.name](config, input_shape, num_classes)


def prunable_roles(model: nn.Module) -> dict[str, str]:
    """Parameter name -> kind ("conv", "hidden" for fully-connected, or "output") for the weights of
    Linear and Conv layers; each kind has its own pruning rate.

    Chosen by module type, never by name: BatchNorm scales and biases are also called `weight`/`bias`.
    The last such layer in registration order is the output layer.
    """
    layers = [(f"{prefix}.weight" if prefix else "weight", module) for prefix, module in model.named_modules()
              if isinstance(module, PRUNABLE_TYPES)]
    if not layers:
        raise ValueError("the model has no Linear or Conv layers to prune")
    return {name: "output" if i == len(layers) - 1 else "hidden" if isinstance(module, nn.Linear) else "conv"
            for i, (name, module) in enumerate(layers)}


__all__ = ["ConvNet", "MLP", "MODELS", "build_model", "prunable_roles"]
