"""lottery: find winning lottery tickets with iterative magnitude pruning, and measure them honestly."""
from lottery._version import __version__
from lottery.pruning.arms import ARMS, register_arm
from lottery.reports.claims import check_claims
from lottery.config import DataConfig, ModelConfig, PruneConfig, RunConfig, TrainConfig
from lottery.pruning.criteria import CRITERIA, register_criterion
from lottery.data import Dataset, load_data, load_dataset
from lottery.errors import UserError
from lottery.deploy.export import Ticket, export_ticket, load_ticket, read_ticket, to_torch_prune
from lottery.procedure.find import find_tickets
from lottery.procedure.user_loop import IMP, Network
from lottery.options import RunOptions
from lottery.pruning.masks import count, percent_remaining
from lottery.models import MODELS, build_model, describe_prunable, prunable_roles
from lottery.presets import PRESETS, get_preset
from lottery.ranks import join_torchrun_group
from lottery.pruning.prune import prune_one_shot, prune_round
from lottery.storage.results import read_results



def write_report(run_dir):  # type: ignore[no-untyped-def]
    """Write RUN_DIR/report/ (figures, report.md); matplotlib is imported only when this is called."""
    from lottery.reports.report import write_report as _write_report

    return _write_report(run_dir)


_EXPERIMENTS = {"compare_runs": "lottery.reports.compare", "noise_run": "lottery.experiments.noise",
                "attack_run": "lottery.experiments.attack", "transfer_run": "lottery.experiments.transfer",
                "stability_run": "lottery.experiments.stability"}


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """The experiments import matplotlib; load them on first use."""
    if name in _EXPERIMENTS:
        import importlib

        return getattr(importlib.import_module(_EXPERIMENTS[name]), name)
    raise AttributeError(f"module 'lottery' has no attribute {name!r}")


__all__ = [
    "__version__", "attack_run", "compare_runs", "load_data", "noise_run", "stability_run", "transfer_run",
    "ARMS", "CRITERIA", "check_claims", "write_report", "DataConfig", "Dataset", "MODELS", "ModelConfig", "PRESETS", "PruneConfig", "RunConfig",
    "RunOptions", "TrainConfig", "UserError", "build_model", "count", "find_tickets", "get_preset",
    "Ticket", "export_ticket", "load_ticket", "read_ticket", "to_torch_prune", "join_torchrun_group", "load_dataset", "percent_remaining", "prunable_roles", "prune_one_shot", "prune_round", "read_results",
    "register_criterion", "IMP", "Network", "register_arm", "describe_prunable",
]
