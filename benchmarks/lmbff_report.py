"""The LM-BFF table (seed lecture, slide 25) from the benchmark's results files: one report, our rows beside the lecture's.

Reads the rows ``benchmarks/lmbff.py`` recorded (and the zero-shot rows of ``zero-shot-smollm2.json``) and
writes ``transferlm report``'s three files: report.html (tables and plots), report.md and results.csv. A cell
over fewer seeds than five says how many (``[n=3]``). Rows of a file trained under mixed precision
(``benchmarks/lmbff.py --precision bf16``) or with another number of demonstration sets (``--demo-sets 16``)
are rows of their own, labelled ``[bf16]``, ``[16 sets]`` or ``[bf16, 16 sets]``, never merged into the default
rows. With ``--readme``, the Markdown tables replace the part of
that file between ``<!-- lmbff-table:begin -->`` and ``<!-- lmbff-table:end -->``.
Usage:
    python benchmarks/lmbff_report.py --output runs/report-lmbff-smollm2 --readme README.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from lmbff import VARIANTS, setting_tags  # benchmarks/ is on the path when run as a script

from transferlm.io import write_text
from transferlm.reports.collect import Cell, Collection, Reference
from transferlm.reports.report import write_report
from transferlm.reports.reproduce import SEEDS, lecture_reference
from transferlm.reports.tables import build_reference_table, build_table, to_markdown

RESULTS = Path(__file__).parent / "results"
DEFAULT_FILES = [RESULTS / "lmbff-smollm2.json", RESULTS / "lmbff-smollm2-more.json", RESULTS / "lmbff-smollm2-bf16.json",
                 RESULTS / "lmbff-smollm2-bf16-8sets.json", RESULTS / "lmbff-smollm2-8sets.json"]
ZERO_SHOT = RESULTS / "zero-shot-smollm2.json"
CALIBRATED = "Prompt-based zero-shot + calibration"
LECTURE_VARIANTS = ("prompt-zero-shot", "icl", "finetune", "prompt-finetune", "prompt-finetune+demos",
                    "prompt-finetune-auto+demos")
TASK_ORDER = ("SST-2", "sst-5", "mr", "cr", "trec", "RTE", "MRPC", "QNLI")
BEGIN, END = "<!-- lmbff-table:begin -->", "<!-- lmbff-table:end -->"
MIXED = re.compile(r" \[(bf16|fp16)\b")  # label suffixes row_tag adds
SETS = re.compile(r" \[.*\b\d+ sets\]$")


def cell(task: str, label: str, method: str, model: str, row: dict[str, Any], source: str) -> Cell:
    trainable = int(row.get("trainable_params") or 0)
    return Cell(task=task, method=label, raw_method=method, metric=row.get("metric", "accuracy"), split="test",
                model=model, shots=16, mean=float(row["mean"]), std=float(row["std"]),
                per_seed=[float(x) for x in row["per_seed"]], seeds=[int(s) for s in row["seeds"]],
                trainable_params=trainable, total_params=0, trainable_percent=0.0,
                train_seconds=float(row.get("train_seconds_per_seed") or 0.0),
                eval_seconds=float(row.get("eval_seconds_per_seed") or 0.0), source=source)


def row_tag(train: dict[str, Any] | None, variant: str, method_args: dict[str, Any] | None) -> str:
    """What sets a row apart from the benchmark's default budget, as a label suffix: `` [bf16]`` for a file trained
    under mixed precision, `` [16 sets]`` for another number of demonstration sets at inference, or both."""
    tags = setting_tags(variant, (train or {}).get("mixed_precision", "no"),
                        (method_args or {}).get("demo_eval_samples"))
    return f" [{', '.join(tags)}]" if tags else ""


def load_cells(files: list[Path], zero_shot: Path | None) -> list[Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        for row in data["rows"]:
            if row["variant"] not in LECTURE_VARIANTS:
                continue  # PEFT variants belong to the PEFT table
            label = VARIANTS[row["variant"]].label + row_tag(data.get("train"), row["variant"], row.get("method_args"))
            cells[(row["task"], label)] = cell(row["task"], label, row["method"], data["model"], row, str(path))
    if zero_shot is not None:
        data = json.loads(zero_shot.read_text(encoding="utf-8"))
        for row in data["rows"]:
            # Seed-independent (no training data is read): the one evaluation stands for every seed.
            label = CALIBRATED if row.get("calibrate") else VARIANTS["prompt-zero-shot"].label
            score = float(row["accuracy"])
            cells.setdefault((row["task"], label), cell(
                row["task"], label, data["method"], data["model"],
                {"mean": score, "std": 0.0, "per_seed": [score] * len(SEEDS), "seeds": SEEDS,
                 "eval_seconds_per_seed": row.get("eval_seconds")}, str(zero_shot)))
    out = list(cells.values())
    if not out:
        raise SystemExit(f"no rows of the lecture's table (variants {', '.join(LECTURE_VARIANTS)}) in "
                         f"{', '.join(map(str, files))}: pass results files written by benchmarks/lmbff.py")
    total = max(c.trainable_params for c in out)  # full fine-tuning trains every weight
    for c in out:
        c.total_params = total
        c.trainable_percent = 100.0 * c.trainable_params / max(total, 1)
    rank = {t: i for i, t in enumerate(TASK_ORDER)}
    return sorted(out, key=lambda c: rank.get(c.task, len(rank)))


def collection(cells: list[Cell]) -> Collection:
    base = [VARIANTS["prompt-zero-shot"].label, CALIBRATED, *[VARIANTS[v].label for v in LECTURE_VARIANTS[1:]]]
    labels = {c.method for c in cells}
    # A row of another precision or number of demonstration sets sits right under the benchmark's default row.
    tagged = {label: sorted((m for m in labels if m.startswith(label + " [")), key=lambda m: (len(m), m))
              for label in base}
    order = [x for label in base for x in [label, *tagged[label]]]
    notes = ["SmolLM2-135M-Instruct, K=16 per class, 60 steps of batch 8 at lr 2e-5 with dev selection every 15 "
             "steps, 2 demonstration sets at inference (LM-BFF: RoBERTa-large, 1,000 steps, 16 sets). "
             "Zero-shot rows are seed-independent: one evaluation.",
             "Commands and per-seed wall times: README, section 'LM-BFF on SmolLM2-135M'."]
    for precision in sorted({m.group(1) for c in cells if (m := MIXED.search(c.method))}):
        notes.append(f"[{precision}]: trained and evaluated under {precision} autocast (train.mixed_precision="
                     f"{precision}), a row of its own; README, 'LM-BFF on SmolLM2-135M', compares it with float32.")
    if any(SETS.search(c.method) for c in cells):
        notes.append("[N sets]: N demonstration sets averaged at inference instead of the other rows' 2.")
    return Collection(cells=cells, title="LM-BFF few-shot table (lecture slide 25) on SmolLM2-135M", notes=notes,
                      reference=Reference(**lecture_reference("lmbff")),
                      method_order=order)


def replace_between(text: str, body: str, where: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{where}: no {BEGIN} ... {END} markers; add them where the table belongs")
    return pattern.sub(lambda _: f"{BEGIN}\n{body}\n{END}", text, count=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=",".join(map(str, DEFAULT_FILES)),
                    help="comma-separated results files of benchmarks/lmbff.py (a later file's row wins)")
    ap.add_argument("--zero-shot", default=str(ZERO_SHOT), help="zero-shot rows (calibrated and not); '' for none")
    ap.add_argument("--output", default="runs/report-lmbff-smollm2")
    ap.add_argument("--readme", help="a Markdown file whose marked part gets the tables")
    args = ap.parse_args()
    cells = load_cells([Path(p) for p in args.results.split(",") if p], Path(args.zero_shot) if args.zero_shot else None)
    coll = collection(cells)
    files = write_report(coll, args.output)
    print(files.table)
    if args.readme:
        table, reference = build_table(coll), build_reference_table(coll)
        body = "\n".join([to_markdown(table), "", "The lecture's numbers for the same tasks (RoBERTa-large):", "",
                          to_markdown(reference)])
        readme = Path(args.readme)
        write_text(readme, replace_between(readme.read_text(encoding="utf-8"), body, args.readme))
    print(json.dumps({"report": str(files.html), "markdown": str(files.markdown), "csv": str(files.csv),
                      **({"readme": args.readme} if args.readme else {})}))


if __name__ == "__main__":
    main()
