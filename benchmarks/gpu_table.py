"""The timings in benchmarks/gpu_swin.py's JSON files as a Markdown table, as README shows them: one row per model
and runner, images/s at each batch size (batch 1 also in ms).

    python benchmarks/gpu_table.py benchmarks/results/gpu_swin_h100-2026-11-27-artifact-swin.json [more.json ...]

Files from one card only (a table that mixes cards compares nothing); a model and runner timed at the same batch
in two files is refused (which one would the table show?). Rows keep the order in which the files list them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODELS = {"swin_tiny_patch4_window7_224": "Swin-T", "vit_base_patch16_224": "ViT-B/16",
          "deit_small_patch16_224": "DeiT-S"}


def timings(result: dict) -> list[tuple[str, str, dict]]:
    """(model, runner, row) for every timed row of one gpu_swin.py result, in the file's order: the sections are
    {model: [rows]} (or {model: {"error": ...}} for a failed step, which has no timings)."""
    found = []
    for section in result.values():
        if not isinstance(section, dict):
            continue
        for model, rows in section.items():
            if isinstance(rows, list):
                found += [(model, row["runner"], row) for row in rows if isinstance(row, dict) and "ms" in row]
    return found


def table(paths: list[Path]) -> str:
    cells: dict[tuple[str, str], dict[int, dict]] = {}
    device = None
    for path in paths:
        result = json.loads(path.read_text())
        if device not in (None, result["device"]):
            raise SystemExit(f"{path} is from {result['device']}, an earlier file from {device}: one card a table")
        device = result["device"]
        for model, runner, row in timings(result):
            at = cells.setdefault((model, runner), {})
            if row["batch"] in at:
                raise SystemExit(f"{MODELS.get(model, model)}, {runner} at batch {row['batch']} is in more than one "
                                 "file: pass one of them")
            at[row["batch"]] = row
    batches = sorted({batch for at in cells.values() for batch in at})
    lines = [markdown_row([f"{device}, images/s (batch-1 ms)", *(f"b{b}" for b in batches)]),
             "|---|" + "---|" * len(batches)]
    for (model, runner), at in cells.items():
        lines.append(markdown_row([f"{MODELS.get(model, model)}, {runner}", *(
            f"{at[b]['images_per_s']:,.0f}" + (f" ({at[b]['ms']:.2f} ms)" if b == 1 else "") if b in at else ""
            for b in batches)]))
    return "\n".join(lines)


def markdown_row(cells: list[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    sys.stdout.write(table(parser.parse_args().files) + "\n")


if __name__ == "__main__":
    main()
