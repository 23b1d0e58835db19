"""Model registry and the roles of prunable tensors. Any torch.nn.Module works from Python."""
from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from lottery.config import ModelConfig
from lottery.data.graph import Graph
from lottery.models.conv import PLANS, ConvNet
from lottery.models.gcn import GCN
from lottery.models.kws import KeywordCNN
from lottery.models.mlp import MLP
from lottery.models.prunable import PRUNABLE_TYPES, describe_prunable, prunable_roles
from lottery.models.resnet import ResNet
from lottery.models.vgg import VGG, VGG_PLANS

ModelBuilder = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]


def _lenet300_100(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), [300, 100], num_classes, config.dropout)


def _mlp(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), list(config.hidden), num_classes, config.dropout)


def _needs_images(name: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        from lottery.errors import UserError

        raise UserError(f"{name} needs images [C, H, W]; the data's inputs are {input_shape}")


def _conv(name: str) -> ModelBuilder:
    def build(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        _needs_images(name, input_shape)
        return ConvNet(PLANS[name], input_shape, num_classes)
    return build


def _vgg(name: str) -> ModelBuilder:
    def build(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        _needs_images(name, input_shape)
        return VGG(VGG_PLANS[name], input_shape[0], num_classes)
    return build


def _resnet(fixed_depth: int | None) -> ModelBuilder:
    """`resnet20` has depth 20; `resnet` takes model.depth (6n + 2; 0 means 20)."""
    def build(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        _needs_images("resnet", input_shape)
        return ResNet(fixed_depth or config.depth or 20, input_shape[0], num_classes)
    return build


def _kws_cnn(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    _needs_images("kws-cnn", input_shape)  # [channels, mel bands, frames]
    return KeywordCNN(input_shape[0], num_classes)


MODELS: dict[str, ModelBuilder] = {
    "lenet300-100": _lenet300_100,
    "mlp": _mlp,
    "conv2": _conv("conv2"),
    "conv4": _conv("conv4"),
    "conv6": _conv("conv6"),
    "vgg16": _vgg("vgg16"),
    "vgg19": _vgg("vgg19"),
    "resnet20": _resnet(20),
    "resnet": _resnet(None),
    "kws-cnn": _kws_cnn,
}

# Models of a graph's nodes: built around the dataset's graph (`build_model(..., graph=data.graph)`).
GRAPH_MODELS: dict[str, Callable[[ModelConfig, Graph, int], nn.Module]] = {
    "gcn": lambda config, graph, classes: GCN(graph, list(config.hidden), classes, config.dropout, config.dropedge),
}


def build_model(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
                graph: Graph | None = None) -> nn.Module:
    from lottery.errors import UserError

    if config.name in GRAPH_MODELS:
        if graph is None:
            raise UserError(f"{config.name} classifies a graph's nodes; it needs a graph dataset (cora, citeseer)")
        return GRAPH_MODELS[config.name](config, graph, num_classes)
    if graph is not None:
        raise UserError(f"the data is a graph's nodes; {config.name} is not a graph model (known: {', '.join(GRAPH_MODELS)})")
    return MODELS[config.name](config, input_shape, num_classes)


def parameter_names(model: nn.Module) -> dict[str, str]:
    """Every name a parameter is reachable by -> its one canonical name (the first, as named_parameters
    gives it). Tied weights, one tensor in two modules, have two names and one canonical name."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    return {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}


__all__ = ["ConvNet", "GCN", "GRAPH_MODELS", "KeywordCNN", "MLP", "ResNet", "VGG", "MODELS", "build_model", "parameter_names", "prunable_roles",
           "describe_prunable", "PRUNABLE_TYPES"]
