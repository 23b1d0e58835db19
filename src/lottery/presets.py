"""Named configs: the paper's protocols and a default that runs anywhere in minutes."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lottery.config import DataConfig, ModelConfig, PruneConfig, RunConfig, TrainConfig
from lottery.errors import UserError


@dataclass(frozen=True)
class Preset:
    summary: str
    build: Callable[[], RunConfig]
    source: str = "Frankle & Carbin (ICLR 2019)"

PAPER = "Frankle & Carbin (ICLR 2019)"


def _lenet300(dataset: str, preset: str) -> RunConfig:
    # Frankle & Carbin (2019), Fig. 2 / App. G: Adam 1.2e-3, batch 60, 50K iterations, evaluate every
    # 100, prune fc layers 20% and the output layer 10% per round, 5,000 validation examples.
    return RunConfig(
        preset=preset,
        trials=1,
        data=DataConfig(dataset=dataset, val_size=5000),
        model=ModelConfig(name="lenet300-100", hidden=[300, 100]),
        train=TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, iterations=50_000, eval_every=100),
        prune=PruneConfig(levels=18, rate_hidden=0.2, rate_output=0.1),
    )


def _mnist1d_mlp() -> RunConfig:
    # MNIST-1D (Greydanus 2020): 4,000 training examples, so the dense MLP overfits and sparse
    # tickets generalize better. Width 500, Adam 1e-2 and 1,500 steps follow the MNIST-1D authors'
    # lottery-ticket notebook; 15 levels x 3 trials take a few minutes on 2 cores.
    return RunConfig(
        preset="mnist1d-mlp",
        trials=3,
        arms=["imp", "reinit"],
        data=DataConfig(dataset="mnist1d", val_size=-1),
        model=ModelConfig(name="mlp", hidden=[500, 500]),
        train=TrainConfig(optimizer="adam", lr=1e-2, batch_size=100, iterations=1500, eval_every=50,
                          test_curves=True),  # 1,000 test examples: full curves cost little
        prune=PruneConfig(levels=14, rate_hidden=0.2, rate_output=0.1),
    )


def _gcn(dataset: str, preset: str, hidden: int, train_nodes: int) -> RunConfig:
    # Kipf & Welling (2017): 2-layer GCN, dropout 0.5, Adam 0.01, weight decay 5e-4, 200 epochs (full batch:
    # one iteration is one epoch over the labelled nodes), the Planetoid split (500 validation nodes);
    # test accuracy at the minimum validation loss. Graph lottery tickets (Chen et al. 2021, UGS): 20% of
    # the remaining weights and 5% of the remaining edges pruned per level, 20 levels (to 1.2% of the
    # weights and 35.8% of the edges); 10 seeds (seconds each). Controls: reinit, random (weights and edges),
    # random-edges (the ticket's weights, a random graph of its size).
    return RunConfig(
        preset=preset,
        trials=10,
        arms=["imp", "reinit", "random", "random-edges"],
        data=DataConfig(dataset=dataset, val_size=500),
        model=ModelConfig(name="gcn", hidden=[hidden], dropout=0.5),
        train=TrainConfig(optimizer="adam", lr=0.01, weight_decay=5e-4, batch_size=train_nodes, iterations=200,
                          eval_every=1),
        prune=PruneConfig(levels=20, rate_hidden=0.2, rate_output=0.2, rate_edge=0.05),
    )


def _lenet300_paper(dataset: str, preset: str) -> RunConfig:
    # The paper's full evidence: 5 trials, the ticket and its random reinitialization at every level,
    # 18 levels (down to 1.9% of the weights).
    config = _lenet300(dataset, preset)
    config.trials, config.arms = 5, ["imp", "reinit"]
    return config


def _lenet300_dropout() -> RunConfig:
    # The paper's Section 4 trains its conv nets with dropout 0.5 on the fully-connected layers; the same
    # rate on LeNet-300-100's hidden layers. Compare with `lenet300-mnist` (no dropout) via `lottery compare`.
    config = _lenet300("mnist", "lenet300-mnist-dropout")
    config.model.dropout = 0.5
    return config


def _conv_cifar10(name: str, lr: float, iterations: int, rate_conv: float) -> RunConfig:
    # Frankle & Carbin (2019), Fig. 2 and App. H: Adam, batch 60, validation every 100 iterations on 5,000
    # held-out training images, no augmentation; per round conv `rate_conv`, fc 20%, output 10%.
    return RunConfig(
        preset=f"{name}-cifar10",
        trials=1,
        arms=["imp", "reinit"],
        data=DataConfig(dataset="cifar10", val_size=5000),
        model=ModelConfig(name=name),
        train=TrainConfig(optimizer="adam", lr=lr, batch_size=60, iterations=iterations, eval_every=100),
        prune=PruneConfig(levels=14, rate_hidden=0.2, rate_output=0.1, rate_conv=rate_conv),
    )


def _cifar10_sgd(preset: str, model: str, *, lr: float, batch: int, iterations: int, milestones: list[int],
                warmup: int, ignore: list[str], rewind: int) -> RunConfig:
    # SGD with momentum 0.9 and weight decay 1e-4 (the CIFAR recipe of He et al. 2016 that both papers
    # follow), flip-crop augmentation, global magnitude pruning of 20% per level over every conv and
    # linear weight except `ignore`; 5,000 training images held out for validation.
    return RunConfig(
        preset=preset,
        trials=1,
        arms=["imp", "reinit"],
        data=DataConfig(dataset="cifar10", val_size=5000, augment="flip-crop"),
        model=ModelConfig(name=model),
        train=TrainConfig(optimizer="sgd", lr=lr, momentum=0.9, weight_decay=1e-4, batch_size=batch,
                          iterations=iterations, eval_every=1000 if iterations > 20_000 else 500,
                          warmup=warmup, milestones=milestones),
        prune=PruneConfig(levels=20, scope="global", rate_hidden=0.2, rate_output=0.2, ignore=ignore,
                          rewind_iteration=rewind),
    )


def _fsdd(model: ModelConfig, preset: str, lr: float, iterations: int, levels: int) -> RunConfig:
    # Spoken digits (FSDD, log-mel [1, 40, 49]): the dataset's own split (recordings 0-4 of every digit and
    # speaker test), 300 training recordings held out for validation; Adam, batch 32, the ticket with its
    # reinit and random controls, 3 trials; fc/conv 20% and output 10% per level, to a few percent.
    return RunConfig(
        preset=preset,
        trials=3,
        arms=["imp", "reinit", "random"],
        data=DataConfig(dataset="fsdd", val_size=300),
        model=model,
        train=TrainConfig(optimizer="adam", lr=lr, batch_size=32, iterations=iterations, eval_every=50,
                          test_curves=True),  # 300 test recordings: full curves cost little
        prune=PruneConfig(levels=levels, rate_hidden=0.2, rate_output=0.1),
    )


GRAPH = ("Kipf & Welling (ICLR 2017) training; Chen et al. (ICML 2021, UGS) pruning rates; graph ticket controls "
         "from this project")
SPEECH = "this project (lottery-ticket protocol of Frankle & Carbin 2019 on the Free Spoken Digit Dataset)"
EPOCH_128 = 391  # iterations per epoch at batch 128 over CIFAR-10's 50,000 training images
MODERN = "open_lth's CIFAR defaults (Frankle et al., ICML 2020: rewinding)"

PRESETS: dict[str, Preset] = {
    "mnist1d-mlp": Preset(
        "default: MLP 40-500-500-10 on MNIST-1D, tickets and reinit controls, 3 trials, 100% to 4.7%; minutes on 2 cores",
        _mnist1d_mlp,
    ),
    "lenet300-mnist": Preset(
        "the paper: LeNet-300-100 on MNIST, Adam 1.2e-3, batch 60, 50K iterations, fc 20% / out 10%",
        lambda: _lenet300("mnist", "lenet300-mnist"),
    ),
    "lenet300-mnist-paper": Preset(
        "the paper's full protocol: lenet300-mnist with 5 trials and arms imp + reinit, 18 levels",
        lambda: _lenet300_paper("mnist", "lenet300-mnist-paper"),
    ),
    "lenet300-fashion-paper": Preset(
        "the same full protocol on Fashion-MNIST",
        lambda: _lenet300_paper("fashion-mnist", "lenet300-fashion-paper"),
    ),
    "lenet300-mnist-dropout": Preset(
        "lenet300-mnist with dropout 0.5 on the hidden layers (the paper's Section 4); compare with lenet300-mnist",
        _lenet300_dropout,
    ),
    "lenet300-fashion": Preset(
        "the paper's LeNet-300-100 protocol on Fashion-MNIST",
        lambda: _lenet300("fashion-mnist", "lenet300-fashion"),
    ),
    "conv2-cifar10": Preset(
        "the paper: Conv-2 on CIFAR-10, Adam 2e-4, batch 60, 20K iterations, conv 10% / fc 20% / out 10%, + reinit",
        lambda: _conv_cifar10("conv2", 2e-4, 20_000, 0.1), PAPER + ", Fig. 2 and App. H",
    ),
    "conv4-cifar10": Preset(
        "the paper: Conv-4 on CIFAR-10, Adam 3e-4, batch 60, 25K iterations, conv 10% / fc 20% / out 10%, + reinit",
        lambda: _conv_cifar10("conv4", 3e-4, 25_000, 0.1), PAPER + ", Fig. 2 and App. H",
    ),
    "conv6-cifar10": Preset(
        "the paper: Conv-6 on CIFAR-10, Adam 3e-4, batch 60, 30K iterations, conv 15% / fc 20% / out 10%, + reinit",
        lambda: _conv_cifar10("conv6", 3e-4, 30_000, 0.15), PAPER + ", Fig. 2 and App. H",
    ),
    "vgg19-cifar10": Preset(
        "the paper's Sec. 5: VGG-19 (BN), SGD 0.1 with 10K warmup, batch 64, 112K iterations, /10 at 56K and 84K, "
        "global 20% over conv layers",
        lambda: _cifar10_sgd("vgg19-cifar10", "vgg19", lr=0.1, batch=64, iterations=112_000,
                             milestones=[56_000, 84_000], warmup=10_000, ignore=["fc.weight"], rewind=0),
        PAPER + ", Sec. 5 and App. I (VGG-19 with warmup)",
    ),
    "resnet20-cifar10-paper": Preset(
        "the paper's Sec. 5: its 'Resnet-18' (ResNet-20), SGD 0.03 with 20K warmup, batch 128, 30K iterations, "
        "/10 at 20K and 25K, global 20% over conv layers (shortcuts and output dense)",
        lambda: _cifar10_sgd("resnet20-cifar10-paper", "resnet20", lr=0.03, batch=128, iterations=30_000,
                             milestones=[20_000, 25_000], warmup=20_000, ignore=["fc.weight", "*shortcut*"],
                             rewind=0),
        PAPER + ", Sec. 5 and App. I (Resnet-18 with warmup)",
    ),
    "resnet20-cifar10": Preset(
        "modern protocol: ResNet-20, SGD 0.1, wd 1e-4, batch 128, 160 epochs (62,560 it.), /10 at epochs 80 "
        "and 120, flip-crop, global 20% (output dense), rewind to iteration 500",
        lambda: _cifar10_sgd("resnet20-cifar10", "resnet20", lr=0.1, batch=128, iterations=160 * EPOCH_128,
                             milestones=[80 * EPOCH_128, 120 * EPOCH_128], warmup=0, ignore=["fc.weight"],
                             rewind=500),
        MODERN,
    ),
    "vgg16-cifar10": Preset(
        "modern protocol: VGG-16 (BN), SGD 0.1, wd 1e-4, batch 128, 160 epochs (62,560 it.), /10 at epochs 80 "
        "and 120, flip-crop, global 20% (output dense), rewind to iteration 1000",
        lambda: _cifar10_sgd("vgg16-cifar10", "vgg16", lr=0.1, batch=128, iterations=160 * EPOCH_128,
                             milestones=[80 * EPOCH_128, 120 * EPOCH_128], warmup=0, ignore=["fc.weight"],
                             rewind=1000),
        MODERN,
    ),
}

PRESETS.update({
    "gcn-cora": Preset(
        "graph tickets: 2-layer GCN (hidden 16) on the Cora citation graph, Kipf & Welling's training, prune 20% of "
        "weights and 5% of citations per level, 20 levels, imp + reinit + random + random-edges, 10 trials; minutes",
        lambda: _gcn("cora", "gcn-cora", 16, 140), GRAPH),
    "gcn-citeseer": Preset(
        "graph tickets: the same on the CiteSeer citation graph",
        lambda: _gcn("citeseer", "gcn-citeseer", 16, 120), GRAPH),
    "gcn512-cora": Preset(
        "graph tickets: gcn-cora with UGS's hidden width 512 (Chen et al. 2021)",
        lambda: _gcn("cora", "gcn512-cora", 512, 140), GRAPH),
    "gcn512-citeseer": Preset(
        "graph tickets: gcn-citeseer with UGS's hidden width 512 (Chen et al. 2021)",
        lambda: _gcn("citeseer", "gcn512-citeseer", 512, 120), GRAPH),
    "fsdd-cnn": Preset(
        "speech: keyword-spotting CNN (3 conv + BN, 23.8K weights) on FSDD log-mel spectrograms, Adam 1e-3, "
        "batch 32, 1,000 iterations, imp + reinit + random, 3 trials, 14 levels (to 4.9%)",
        lambda: _fsdd(ModelConfig(name="kws-cnn"), "fsdd-cnn", 1e-3, 1000, 14), SPEECH,
    ),
    "fsdd-mlp": Preset(
        "speech: MLP 1960-256-256-10 on FSDD log-mel spectrograms, Adam 1e-3, batch 32, 1,000 iterations, "
        "imp + reinit + random, 3 trials, 16 levels (to 2.9%)",
        lambda: _fsdd(ModelConfig(name="mlp", hidden=[256, 256]), "fsdd-mlp", 1e-3, 1000, 16), SPEECH,
    ),
})

DEFAULT_PRESET = "mnist1d-mlp"


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; known: {', '.join(PRESETS)} (see `lottery presets`)")
    return PRESETS[name].build()
