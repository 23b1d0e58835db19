"""Tables and a figure for docs/speech.md from the finished speech runs (see runs/speech/run.sh).

    .venv/bin/python docs/speech/make_tables.py RUNS_FOLDER DATA_DIR > docs/speech/tables.md

For each fsdd-mlp run with a held-out speaker: test accuracy on that (never heard) speaker for the ticket,
reinit and random arms by level, against the same speaker's own results: the standard-split run (the
speaker in training) evaluated on that speaker's 50 test recordings. Both on the final weights (the
end of training), because the early-stop weights are not kept; mean over trials.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

import torch

from lottery.data.fsdd import SPEAKERS, speakers_of
from lottery.reports.figures import save_figure, subplots
from lottery.storage.finished import model_and_data, open_run


def per_speaker_final_accuracy(run_dir: Path, data_dir: Path) -> dict[tuple[str, int, str], float]:
    """(arm, level, speaker) -> mean over trials of the final weights' accuracy on the speaker's test recordings."""
    run = open_run(run_dir)
    model, _, data, _ = model_and_data(run, data_dir)
    who = speakers_of(data_dir)
    out: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    with torch.no_grad():
        for arm in run.arms:
            for level in run.levels:
                for trial in run.trials:
                    if not run.has(trial, level, arm):
                        continue
                    logits = torch.func.functional_call(model.eval(), run.final(trial, level, arm), (data.x_test,))
                    right = (logits.argmax(1) == data.y_test).tolist()
                    for speaker in SPEAKERS:
                        picked = [r for r, s in zip(right, who) if s == speaker]
                        out[(arm, level, speaker)].append(sum(picked) / len(picked))
    return {k: mean(v) for k, v in out.items()}


def main() -> None:
    runs, data_dir = Path(sys.argv[1]), Path(sys.argv[2])
    standard = next(p for p in runs.glob("fsdd-mlp-*") if open_run(p).config.data.speakers_out == "")
    own = per_speaker_final_accuracy(standard, data_dir)
    std_run = open_run(standard)
    held = {open_run(p).config.data.speakers_out: open_run(p) for p in runs.glob("fsdd-mlp-*")
            if open_run(p).config.data.speakers_out}
    print("| held-out speaker | level | remaining | imp (new speaker) | reinit | random | imp, speaker in training (standard split) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    curves: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for speaker in SPEAKERS:
        if speaker not in held:
            continue
        run = held[speaker]
        for level in run.levels:
            cells = []
            for arm in ("imp", "reinit", "random"):
                rows = run.rows_of(arm if level else "imp", level)
                value = mean(r["final_test_accuracy"] for r in rows) if rows else float("nan")
                cells.append(value)
                curves[arm][round(run.percent(level), 1)].append(value)
            percent = run.percent(level)
            std_level = min(std_run.levels, key=lambda lv: abs(std_run.percent(lv) - percent))
            reference = own.get(("imp", std_level, speaker), float("nan"))
            curves["imp, speaker in training"][round(percent, 1)].append(reference)
            if level in (0, 3, 6, 8, 10):
                print(f"| {speaker} | {level} | {percent:.1f}% | " + " | ".join(f"{100 * c:.1f}" for c in cells)
                      + f" | {100 * reference:.1f} (level {std_level}) |")
    figure, axis = subplots(figsize=(6.4, 4.2))
    for arm, style in (("imp", "-o"), ("reinit", "--s"), ("random", ":^"), ("imp, speaker in training", "-.d")):
        points = sorted(curves[arm].items(), reverse=True)
        axis.plot([p for p, _ in points], [100 * mean(v) for _, v in points], style, label=arm, markersize=4)
    axis.set_xscale("log")
    axis.invert_xaxis()
    axis.set_xlabel("weights remaining (%)")
    axis.set_ylabel("test accuracy on the speaker (%), final weights")
    axis.set_title("FSDD, MLP: a speaker never heard in training (mean of 6 speakers)")
    axis.legend()
    save_figure(figure, Path(__file__).resolve().parent / "held_out_speakers.png")


if __name__ == "__main__":
    main()
