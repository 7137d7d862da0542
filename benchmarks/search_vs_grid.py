"""Time a grid of model_2's lr, hidden units and batch size against a search of the same box.

    python benchmarks/search_vs_grid.py --output benchmarks/search_vs_grid.json

Three runs, each in a fresh clone of this repository's HEAD with a copy of its DVC cache and no
run-cache, so that nothing is restored from another run: the 8-point grid (`fmnist-sweep`), an
8-trial search (`fmnist-search`), and the same search with `--prune`. Prints one Markdown table:
the best test accuracy each found, and its wall time for all its experiments. Needs the real
data in the cache (`make repro` first); takes about half an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = [
    "models.model_2.lr=0.03,0.15",
    "models.model_2.hidden_units=8,24",
    "models.model_2.batch_size=32,64",
]
SPACE = [
    "models.model_2.lr=log:0.03:0.15",
    "models.model_2.hidden_units=int:8:24",
    "models.model_2.batch_size=choice:32,64",
]


def clone(dest: Path) -> Path:
    """A clone of HEAD with the workspace's DVC objects (not its run-cache), checked out."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    shutil.copytree(ROOT / ".dvc" / "cache" / "files", dest / ".dvc" / "cache" / "files")
    subprocess.run([sys.executable, "-m", "dvc", "checkout", "-q"], cwd=dest, check=True)
    return dest


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    """Run a command to its end; return its wall seconds and its output."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return wall, done.stdout


def grid_best(root: Path) -> tuple[float, int]:
    """The grid's best model_2 accuracy, and how many experiments ran."""
    rows = list(csv.DictReader((root / "sweep" / "sweep.csv").open()))
    return max(float(r["model_2 accuracy"].rstrip("%")) / 100 for r in rows), len(rows)


def search_best(root: Path, study: str) -> tuple[float, int, int]:
    """The search's best model_2 accuracy, its finished trials and its pruned ones."""
    import optuna
    from optuna.trial import TrialState

    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{root}/search/study.db")
    pruned = len(loaded.get_trials(states=(TrialState.PRUNED,)))
    return loaded.best_value, len(loaded.get_trials(states=(TrialState.COMPLETE,))), pruned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the results as JSON here too")
    parser.add_argument("--seed", type=int, default=42, help="the searches' seed")
    parser.add_argument(
        "--runs",
        default="grid,search,search --prune",
        help="which runs, comma-separated; the others' figures are kept from --output",
    )
    args = parser.parse_args(argv)
    runs = [run.strip() for run in args.runs.split(",")]
    env_bin = Path(sys.executable).parent
    os.environ["PATH"] = f"{env_bin}{os.pathsep}{os.environ['PATH']}"
    kept = args.output and args.output.exists()
    results = json.loads(args.output.read_text()) if kept else {}
    with tempfile.TemporaryDirectory(prefix="fmnist-search-bench-") as scratch:
        if "grid" in runs:
            root = clone(Path(scratch) / "grid")
            sweep = [str(env_bin / "fmnist-sweep"), "--jobs", "1"]
            wall, _ = timed([*sweep, *(a for o in GRID for a in ("-S", o))], root)
            best, count = grid_best(root)
            results["grid"] = {"experiments": count, "best_accuracy": best, "wall_s": wall}
            print(f"grid: {results['grid']}", file=sys.stderr, flush=True)
        for name, extra in (("search", []), ("search --prune", ["--prune"])):
            if name not in runs:
                continue
            root = clone(Path(scratch) / name.replace(" ", "").replace("-", ""))
            command = [str(env_bin / "fmnist-search"), "--trials", "8", "--seed", str(args.seed)]
            command += [a for p in SPACE for a in ("-P", p)] + extra
            wall, _ = timed(command, root)
            best, complete, pruned = search_best(root, "search")
            results[name] = {
                "experiments": complete,
                "pruned": pruned,
                "best_accuracy": best,
                "wall_s": wall,
            }
            print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    lines = ["| run | trials run to the end | pruned | best model_2 accuracy | wall time |"]
    lines.append("|---|--:|--:|--:|--:|")
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['experiments']} | {r.get('pruned', 0)} | "
            f"{100 * r['best_accuracy']:.2f}% | {r['wall_s'] / 60:.1f} min |"
        )
    print("\n".join(lines))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
