"""What a sweep or search shows: the table of its experiments, a CSV, a chart, and the summary
of each experiment's state, params and metrics. Run as a module, it prints the experiments of
the current commit with only what changed, the view of `make experiments`:

    python -m fmnist.experiments.report
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fmnist.experiments.dvc_command import run_dvc
from fmnist.experiments.queue import (
    Experiment,
    collect,
    failure_reason,
    queue_log,
    split_override,
)
from fmnist.pipeline.atomic import write_text
from fmnist.pipeline.cli import command_parser, entry_point
from fmnist.pipeline.paths import METRICS_FILE


def _number(value: Any) -> float | None:
    """A metric as a number, or None when it is missing or not a number (a hand-edited file)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _cell(value: Any, shown: Callable[[float], str]) -> str:
    """A metric as the table shows it: a number through `shown`, `-` when missing, else as is."""
    if value is None:
        return "-"
    number = _number(value)
    return repr(value) if number is None else shown(number)


def table(experiments: Sequence[Experiment], keys: Sequence[str]) -> list[list[str]]:
    """Rows of text: experiment, state, the swept params, then each model's accuracy and loss."""
    models = sorted({m for e in experiments for m in e.metrics})
    header = ["experiment", "state", *keys]
    header += [f"{m} {what}" for m in models for what in ("accuracy", "loss")]
    rows = [header]
    for e in experiments:
        row = [e.name, e.status, *(str(e.params.get(k, "-")) for k in keys)]
        for model in models:
            scores = e.metrics.get(model, {})
            acc, loss = scores.get("accuracy"), scores.get("loss")
            row += [_cell(acc, lambda a: f"{100 * a:.2f}%"), _cell(loss, lambda v: f"{v:.4f}")]
        rows.append(row)
    return rows


def format_table(rows: list[list[str]]) -> str:
    """Align a list of rows into columns: names to the left, values to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def accuracy_axis(values: Sequence[float]) -> tuple[float, float]:
    """The y-range for accuracies in %: near the data, so that tenths of a point show."""
    shown = [v for v in values if v == v]  # NaN: an experiment without that metric
    if not shown:
        return 0.0, 100.0
    low, high = min(shown), max(shown)
    pad = max(0.5, 0.25 * (high - low))  # room above for the value labels
    return max(0.0, low - pad), min(100.0, high + pad)


def sweep_figure(experiments: Sequence[Experiment], keys: Sequence[str]) -> Any:
    """Each finished experiment's test accuracy for the swept models, as labelled bars."""
    from fmnist.pipeline.figures import new_figure  # matplotlib: only to draw

    done = [e for e in experiments if e.metrics]
    models = sorted({m for e in done for m in e.metrics})
    swept = [m for m in models if any(k.startswith(f"models.{m}.") for k in keys)]
    models = swept or models  # the others' bars would be the same in every experiment
    fig = new_figure((max(6.0, 2.2 * len(done)), 4.5))  # room for names of 16 characters
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    every = []
    for i, model in enumerate(models):
        accuracies = [_number(e.metrics.get(model, {}).get("accuracy")) for e in done]
        values = [float("nan") if a is None else 100 * a for a in accuracies]
        every += values
        bars = ax.bar([x + i * width for x in range(len(done))], values, width, label=model)
        ax.bar_label(bars, labels=[f"{v:.2f}" if v == v else "" for v in values], fontsize=8)
    low, high = accuracy_axis(every)
    ax.set_ylim(low, high)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(done))])
    labels = [
        "\n".join([e.name, *(f"{k.split('.')[-1]}={e.params.get(k)}" for k in keys)]) for e in done
    ]
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(f"test accuracy (%), axis from {low:.1f}")
    ax.set_title("Sweep: test accuracy by experiment")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def draw(experiments: Sequence[Experiment], keys: Sequence[str], path: Path) -> None:
    """Save `sweep_figure` as a PNG."""
    from fmnist.pipeline.figures import save_figure

    save_figure(sweep_figure(experiments, keys), path)


def write_csv(rows: list[list[str]], path: Path) -> None:
    """Write the table as CSV."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    write_text(path, buffer.getvalue())


def summarise(
    names: Sequence[str],
    states: Mapping[str, str],
    queued: Mapping[str, Sequence[str]],
    keys: Sequence[str],
    env: Mapping[str, str],
) -> list[Experiment]:
    """Each experiment's state, swept params, metrics and error, from DVC and the queued values."""
    logs = {name: queue_log(name, env) for name in names if states.get(name) == "Failed"}
    found = collect(names, keys, env)
    experiments = []
    for name in names:
        e = Experiment(name=name, status=states.get(name, "Lost"))
        if name in found:
            e.params, e.metrics = found[name]
        elif e.status == "Success":
            e.status, e.error = "Lost", "finished, but `dvc exp show` does not list it"
        elif e.status == "Lost":
            e.error = "the queue no longer lists it, or no worker would run it"
        if e.status == "Failed":
            e.error = failure_reason(logs[name])
        if not e.params:  # not in `dvc exp show`: the values it was queued with
            values = dict(split_override(o) for o in queued.get(name, []))
            e.params = {key: values.get(key, "-") for key in keys}
        experiments.append(e)
    return experiments


def report(experiments: Sequence[Experiment], keys: Sequence[str], out: Path | None) -> None:
    """Print the table and each experiment's error; write the CSV and the chart under `out`."""
    rows = table(experiments, keys)
    print(f"\n{format_table(rows)}", end="")
    for e in experiments:
        if e.error:
            print(f"{e.name} {e.status.lower()}: {e.error}")
    if out is None:
        return
    csv_path, chart = out / "sweep.csv", out / "sweep.png"
    write_csv(rows, csv_path)
    if any(e.metrics for e in experiments):
        draw(experiments, keys, chart)
        print(f"wrote {csv_path} and {chart}")
    else:  # an older sweep's chart must not pass for this one's
        chart.unlink(missing_ok=True)
        print(f"wrote {csv_path} (no chart: no experiment has metrics)")


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys to values (lists kept whole)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_leaves(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def experiments_shown(shown: Sequence[Mapping[str, Any]]) -> list[tuple[Experiment, dict]]:
    """The commits and experiments of `dvc exp show --json`, each with all its params flat."""
    found = []

    def add(name: str, status: str, rev: Mapping[str, Any]) -> None:
        data = rev.get("data") or {}
        params = (data.get("params") or {}).get("params.yaml", {}).get("data") or {}
        entry = (data.get("metrics") or {}).get(str(METRICS_FILE), {})
        found.append(
            (Experiment(name, status, metrics=dict(entry.get("data") or {})), _leaves(params))
        )

    for baseline in shown:
        if baseline.get("rev") == "workspace":
            continue
        add(baseline.get("name") or baseline["rev"][:7], "", baseline)
        for group in baseline.get("experiments") or []:
            # No executor: run in the workspace or `--temp`, and finished.
            state = ((group.get("executor") or {}).get("state") or "success").capitalize()
            for rev in group["revs"]:
                add(rev.get("name") or rev["rev"][:7], "Failed" if rev.get("error") else state, rev)
    return found


def changed_view(rows: Sequence[tuple[Experiment, dict]]) -> tuple[list[Experiment], list[str]]:
    """Keep only what differs between rows: the params that changed, the models that moved."""
    keys = sorted(
        {key for _, params in rows for key in params},
        key=lambda key: [*key.split(".")],
    )
    changed = [k for k in keys if len({repr(p.get(k)) for _, p in rows}) > 1]
    models = sorted({m for e, _ in rows for m in e.metrics})
    moved = [m for m in models if len({repr(e.metrics.get(m)) for e, _ in rows}) > 1]
    experiments = []
    for e, params in rows:
        e.params = {k: params.get(k, "-") for k in changed}
        e.metrics = {m: e.metrics[m] for m in moved if m in e.metrics}
        experiments.append(e)
    return experiments, changed


def short_key(key: str) -> str:
    """A param's column name without the `models.` every model key starts with."""
    return key.removeprefix("models.")


def experiments_table(shown: Sequence[Mapping[str, Any]]) -> str:
    """`make experiments`: the changed params and the metrics they moved, narrow enough to read."""
    experiments, keys = changed_view(experiments_shown(shown))
    if not experiments:
        return "no commit or experiment to show\n"
    rows = table(experiments, keys)
    rows[0] = [*rows[0][:2], *(short_key(k) for k in keys), *rows[0][2 + len(keys) :]]
    rows[0] = [cell.replace(" accuracy", " acc") for cell in rows[0]]
    return format_table(rows)


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    """Print the experiments of the current commit: what changed and what it moved."""
    parser = command_parser(__doc__, prog="python -m fmnist.experiments.report")
    parser.add_argument("--all-commits", action="store_true", help="every commit, not only HEAD")
    args = parser.parse_args(argv)
    shown = run_dvc("exp", "show", "--json", *(["--all-commits"] if args.all_commits else []))
    print(experiments_table(json.loads(shown)), end="")


if __name__ == "__main__":
    main()
