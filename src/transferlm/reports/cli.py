"""``transferlm report`` and ``transferlm reproduce``: their flags and commands (wired into the main parser with
``add_report_commands(sub)``)."""

from __future__ import annotations

import argparse
import time
from typing import Any

EPILOG_REPORT = """examples:
  transferlm report runs/sst2 runs/cr --output reports/few-shot      # compare folders -> one report
  transferlm report runs/reproduce-lmbff --output reports/lmbff      # a reproduce folder (labels, reference)
  transferlm report runs/bench-stability --output reports/stability  # finds every compare folder below"""
EPILOG_REPRODUCE = """examples:
  transferlm reproduce --suite lmbff --quick --data-dir ../shared/data   # minutes: a smoke-sized suite
  transferlm reproduce --suite peft --data-dir ../shared/data --output runs/peft   # hours: the full suite
  transferlm reproduce --suite dapt --tasks acl-arc --seeds 13,21 --dry-run      # print the plan only
  transferlm reproduce --suite lmbff --tasks SST-2,cr --set train.max_steps=200  # any run key, every run
  transferlm reproduce --suite dapt --pretrain-set steps=80 --pretrain-set max_length=64  # a smaller DAPT budget"""


def add_report_commands(subparsers: Any) -> None:
    """Add ``report`` and ``reproduce`` to the ``transferlm`` subparsers."""
    from ..cli import add_command

    rp = add_command(subparsers, "report",
                     "write one HTML report (tables, plots) plus Markdown and CSV from compare folders", cmd_report,
                     EPILOG_REPORT)
    rp.add_argument("folders", nargs="+", metavar="FOLDER",
                    help="compare --output folders, reproduce folders, or folders holding them")
    rp.add_argument("--output", required=True, help="folder for report.html, report.md and results.csv")
    rp.add_argument("--title", help="page title (default: the suite's, or 'transferlm report')")
    rs = add_command(subparsers, "reproduce",
                     "run the experiments behind the lecture's tables (lmbff, peft, dapt) and report them",
                     cmd_reproduce, EPILOG_REPRODUCE)
    rs.add_argument("--suite", required=True, choices=["lmbff", "peft", "dapt"],
                    help="lmbff: slide 25 (prompting, K=16); peft: slide 33; dapt: slide 8")
    rs.add_argument("--quick", action="store_true",
                    help="a smoke-sized suite: 1 seed, 1 task, few steps, a test subset (minutes on 2 cores)")
    rs.add_argument("--output", help="folder for the runs, suite.json and the report (default runs/reproduce-SUITE, '-quick' added with --quick)")
    rs.add_argument("--model", help="model for every run (default: smollm2-135m for lmbff, minilm-l6 otherwise; "
                                    "splade-tiny for lmbff --quick)")
    rs.add_argument("--data-dir", help="data root (default: $TRANSFERLM_DATA)")
    rs.add_argument("--tasks", help="comma-separated tasks instead of the suite's")
    rs.add_argument("--seeds", help="comma-separated seeds (default 13,21,42,87,100; --quick: 13)")
    rs.add_argument("--shots", help="K per class, or 'full' (default 16)")
    rs.add_argument("--max-test", type=int, help="score on a fixed random subset of at most N test examples "
                                                 "(default: all; --quick: 200); 0 = all")
    rs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any run config key for every run, e.g. --set train.max_steps=200")
    rs.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a pretraining setting for every DAPT/TAPT step of the dapt suite, "
                         "e.g. --pretrain-set steps=80 --pretrain-set max_length=64")
    rs.add_argument("--dry-run", action="store_true", help="print the plan (every run) and exit")
    rs.add_argument("--quiet", action="store_true", help="only the per-step progress lines and the result")


def cmd_report(args: argparse.Namespace) -> int:
    from . import build_report

    files = build_report(args.folders, args.output, title=args.title)
    print(files.table)
    print(f"report: {files.html}\nmarkdown: {files.markdown}\ncsv: {files.csv}")
    return 0


def reproduce_plan(args: argparse.Namespace) -> Any:
    """The plan of ``reproduce``'s flags (no I/O)."""
    from ..cli import _key_values, _list_arg  # the same KEY=VALUE and comma-list parsing as run/compare
    from ..config import parse_shots
    from .reproduce import build_plan

    overrides = dict(_key_values(args.set, "--set"))
    pretrain_overrides = dict(_key_values(args.pretrain_set, "--pretrain-set"))
    return build_plan(args.suite, quick=args.quick, output=args.output, model=args.model, data_dir=args.data_dir,
                      tasks=_list_arg(args.tasks, str, "--tasks") if args.tasks else None,
                      seeds=_list_arg(args.seeds, int, "--seeds") if args.seeds else None,
                      shots=parse_shots(args.shots) if args.shots is not None else "default",
                      max_test=(None if args.max_test == 0 else args.max_test) if args.max_test is not None
                      else "default", overrides=overrides, pretrain_overrides=pretrain_overrides)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import execute, validate

    plan = reproduce_plan(args)
    if args.dry_run:
        validate(plan, check_data=False)  # a misspelt --set key fails here too, not only once the suite runs
    runs = plan.runs()
    print(f"{plan.title}: {len(plan.pretrains)} pretraining step(s), {len(plan.entries)} compare(s), "
          f"{len(runs)} run(s) -> {plan.output}")
    if args.dry_run:
        for step in plan.pretrains:
            print(f"  pretrain {step.name}: {step.config['model']} on {', '.join(step.config['texts'])} "
                  f"({step.config['steps']} steps) -> {step.dir}")
        for r in runs:
            print(f"  {r['task']:8s} {r['label']:42s} {r['method']:17s} seed {r['seed']:<3d} -> {r['dir']}")
        return 0
    t0 = time.perf_counter()
    files = execute(plan)
    if files is not None:
        print(files.table)
        print(f"report: {files.html}\nmarkdown: {files.markdown}\ncsv: {files.csv}")
    print(f"wall time {time.perf_counter() - t0:.0f}s (finished runs are reused when rerun)")
    return 0
