"""lottery: find winning lottery tickets with iterative magnitude pruning, and measure them honestly."""
from .arms import ARMS, register_arm
from .claims import check_claims
from .config import DataConfig, ModelConfig, PruneConfig, RunConfig, TrainConfig
from .criteria import CRITERIA, register_criterion
from .data import Dataset, load_data, load_dataset
from .errors import UserError
from .export import Ticket, export_ticket, load_ticket, read_ticket, to_torch_prune
from .imp import find_tickets
from .user_loop import IMP, Network
from .options import RunOptions
from .masks import count, percent_remaining
from .models import MODELS, build_model, describe_prunable, prunable_roles
from .presets import PRESETS, get_preset
from .ranks import join_torchrun_group
from .prune import prune_one_shot, prune_round
from .results import read_results



def write_report(run_dir):  # type: ignore[no-untyped-def]
    """Write RUN_DIR/report/ (figures, report.md); matplotlib is imported only when this is called."""
    from .report import write_report as _write_report

    return _write_report(run_dir)


_EXPERIMENTS = {"compare_runs": "compare", "noise_run": "noise", "attack_run": "attack", "transfer_run": "transfer",
               "stability_run": "stability"}


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """The experiments import matplotlib; load them on first use."""
    if name in _EXPERIMENTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPERIMENTS[name]}", __name__), name)
    raise AttributeError(f"module 'lottery' has no attribute {name!r}")


__all__ = [
    "attack_run", "compare_runs", "load_data", "noise_run", "stability_run", "transfer_run",
    "ARMS", "CRITERIA", "check_claims", "write_report", "DataConfig", "Dataset", "MODELS", "ModelConfig", "PRESETS", "PruneConfig", "RunConfig",
    "RunOptions", "TrainConfig", "UserError", "build_model", "count", "find_tickets", "get_preset",
    "Ticket", "export_ticket", "load_ticket", "read_ticket", "to_torch_prune", "join_torchrun_group", "load_dataset", "percent_remaining", "prunable_roles", "prune_one_shot", "prune_round", "read_results",
    "register_criterion", "IMP", "Network", "register_arm", "describe_prunable",
]
