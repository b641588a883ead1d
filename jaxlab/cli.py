"""`jaxlab train|list` (also `python -m jaxlab ...`).

User errors (bad config, override, mesh, data, workdir) print one line and exit with status 2;
a run that fails (non-finite loss) prints one line and exits with status 1.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import signal
import sys

from jaxlab.errors import ConfigError, TrainingError
from jaxlab.train.preemption import Preempted

SIGNAL_NAMES = {"SIGTERM", "SIGINT"}

OVERRIDE = re.compile(r"^--config\.([A-Za-z_][\w.]*)(?:=(.*))?$", re.S)


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """`--config.a.b=v` or `--config.a.b v` pairs -> {"a.b": "v"} (values still strings)."""
    overrides, i = {}, 0
    while i < len(extra):
        match = OVERRIDE.match(extra[i])
        if not match:
            raise ConfigError(f"unrecognized argument {extra[i]!r}; overrides look like "
                              f"--config.train.steps=100")
        key, value = match.group(1), match.group(2)
        if value is None:
            if i + 1 >= len(extra):
                raise ConfigError(f"{extra[i]} needs a value, e.g. {extra[i]}=VALUE")
            value, i = extra[i + 1], i + 1
        overrides[key] = value
        i += 1
    return overrides


def default_workdir(spec: str) -> pathlib.Path:
    path, _, arg = spec.partition(":")
    stem = pathlib.Path(path).with_suffix("")
    parts = [p for p in stem.parts if p not in ("configs", ".", "..")]
    name = "_".join(parts) + (("-" + re.sub(r"[^\w=.-]+", "_", arg)) if arg else "")
    return pathlib.Path("runs") / name


def cmd_train(args, extra: list[str]) -> int:
    from jaxlab import config as config_lib
    from jaxlab.train.loop import train

    overrides = parse_overrides(extra)
    config = config_lib.load(args.config, overrides)
    workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(args.config)
    print(f"config {args.config} -> workdir {workdir}", flush=True)
    summary = train(config, workdir, progress=not args.no_progress)
    print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    print(f"\ndone: {summary['steps']} steps in {summary['workdir']}")
    for key in ("train_bpb", "valid_bpb", "train_loss", "valid_loss", "valid_accuracy",
                "tokens_per_s", "examples_per_s"):
        if summary.get(key) is not None:
            print(f"  {key:15s} {summary[key]:.4g}")
    if summary.get("sample"):
        print("  sample (prompt from valid split, then generated):")
        print("    " + summary["sample"].replace("\n", "\n    "))


def cmd_list(args, extra: list[str]) -> int:
    from jaxlab import config as config_lib
    if extra:
        raise ConfigError(f"unrecognized arguments {' '.join(extra)!r} for `jaxlab list`")
    rows = config_lib.list_configs()
    width = max(len(path) for path, _ in rows)
    print("configs:")
    for path, doc in rows:
        print(f"  {path:{width}s}  {doc}")
    from jaxlab.experiments.reproduce import list_experiments
    print_experiments(list_experiments())
    return 0


def cmd_reproduce(args, extra: list[str]) -> int:
    from jaxlab.experiments.reproduce import list_experiments, reproduce
    if extra:
        raise ConfigError(f"unrecognized arguments {' '.join(extra)!r} for `jaxlab reproduce`")
    if args.list or not args.name:
        print_experiments(list_experiments())
        return 0 if args.list else 2
    rows = [r for r in (args.rows or "").split(",") if r] or None
    reproduce(args.name, scale=args.scale, seeds=args.seeds, rows=rows, out=args.out,
              publish=args.publish)
    return 0


def print_experiments(rows) -> None:
    print("experiments (budget in minutes per scale):")
    for name, title, budgets in rows:
        budget = ", ".join(f"{scale} {minutes:g}" for scale, minutes in budgets.items())
        print(f"  {name:24s} {title}  [{budget}]")


def build_parser() -> argparse.ArgumentParser:
    from jaxlab.config import DEFAULT_CONFIG
    parser = argparse.ArgumentParser(prog="jaxlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a config (default: the byte-level GPT on pysrc)",
                           epilog="Override any config key with --config.GROUP.KEY=VALUE.")
    train.add_argument("--config", default=DEFAULT_CONFIG,
                       help="config file with an optional arg: path.py[:key=value,flag]")
    train.add_argument("--workdir", help="run directory (default runs/<config name>); an "
                       "existing one is resumed")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=cmd_train)
    lister = sub.add_parser("list", help="list configs and experiments with their descriptions")
    lister.set_defaults(run=cmd_list)
    repro = sub.add_parser("reproduce", help="run a paper's table: jaxlab reproduce NAME")
    repro.add_argument("name", nargs="?", help="experiment name (see --list)")
    repro.add_argument("--list", action="store_true", help="list the experiments and budgets")
    repro.add_argument("--scale", default="cpu", help="cpu (minutes on a CPU), full, or smoke")
    repro.add_argument("--seeds", type=int, default=None, help="seeds per row (default: the "
                       "experiment's)")
    repro.add_argument("--rows", help="comma-separated subset of rows")
    repro.add_argument("--out", default="runs/reproductions", help="output folder")
    repro.add_argument("--publish", action="store_true",
                       help="also copy the table and plots to experiments/results/NAME/")
    repro.set_defaults(run=cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        return args.run(args, extra)
    except ConfigError as error:
        print(f"jaxlab: error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"jaxlab: training failed: {error}", file=sys.stderr)
        return 1
    except Preempted as stop:
        print(f"jaxlab: {stop}", file=sys.stderr)
        return 128 + signal.Signals[stop.signal_name].value if stop.signal_name in SIGNAL_NAMES else 1
    except KeyboardInterrupt:
        print("jaxlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
