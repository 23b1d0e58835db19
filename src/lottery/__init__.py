"""lottery: find winning lottery tickets with iterative magnitude pruning, and measure them honestly."""
from .arms import ARMS
from .claims import check_claims
from .config import DataConfig, ModelConfig, PruneConfig, RunConfig, TrainConfig
from .criteria import CRITERIA, register_criterion
from .data import Dataset, load_dataset
from .errors import UserError
from .imp import RunOptions, find_tickets
from .masks import count, percent_remaining
from .models import MODELS, build_model, prunable_roles
from .presets import PRESETS, get_preset
from .prune import prune_one_shot, prune_round
from .results import read_results



def write_report(run_dir):  # type: ignore[no-untyped-def]
    """Write RUN_DIR/report/ (figures, report.md); matplotlib is imported only when this is called."""
    from .report import write_report as _write_report

    return _write_report(run_dir)


__all__ = [
    "ARMS", "CRITERIA", "check_claims", "write_report", "DataConfig", "Dataset", "MODELS", "ModelConfig", "PRESETS", "PruneConfig", "RunConfig",
    "RunOptions", "TrainConfig", "UserError", "build_model", "count", "find_tickets", "get_preset",
    "load_dataset", "percent_remaining", "prunable_roles", "prune_one_shot", "prune_round", "read_results",
    "register_criterion",
]
