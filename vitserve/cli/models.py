"""`vitserve models`: the catalogue's aliases and their preprocessing."""

from __future__ import annotations

import argparse
import json


def markdown() -> str:
    """The supported-models table of README.md (a test keeps the two equal)."""
    from vitserve.models.catalogue import list_specs

    rows = ["| alias | timm architecture | weights tag | input | crop_pct | mean / std | description |",
            "|---|---|---|---|---|---|---|"]
    for s in list_specs():
        p = s.preprocess
        norm = "imagenet" if p.mean == (0.485, 0.456, 0.406) else f"{p.mean[0]} / {p.std[0]}"
        rows.append(f"| `{s.name}` | `{s.timm_name}` | {s.pretrained_tag or 'bundled'} | {p.input_size[1]} | "
                    f"{p.crop_pct} | {norm} | {s.description} |")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    from vitserve.models.catalogue import list_specs

    specs = list_specs()
    if args.markdown:
        print(markdown())
        return 0
    if args.json:
        print(json.dumps([{"name": s.name, "timm_name": s.timm_name, "pretrained_tag": s.pretrained_tag,
                           "num_classes": s.num_classes, "preprocess": s.preprocess.to_dict(),
                           "description": s.description} for s in specs], indent=2))
        return 0
    print(f"{'name':<18} {'timm architecture':<34} {'input':<8} description")
    for s in specs:
        print(f"{s.name:<18} {s.timm_name:<34} {s.preprocess.input_size[1]:<8} {s.description}")
    print("\nAny timm architecture name is accepted as well (e.g. swin_base_patch4_window12_384), and so is a\n"
          "fine-tuned model as timm saves it: a folder holding config.json and model.safetensors\n"
          "(local-dir:PATH, or just its path), or a hub repository holding one (hf-hub:ORG/NAME).")
    return 0


def add(sub) -> None:
    p = sub.add_parser("models", help="list the model aliases and their preprocessing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--markdown", action="store_true", help="print the README's table")
    p.set_defaults(func=run)
