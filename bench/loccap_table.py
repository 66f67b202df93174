"""Markdown table of the location-conditioned captioning lab's JSON lines (bench/loccap_lab.py --log).

    python bench/loccap_table.py lab.jsonl
"""
from __future__ import annotations

import json
import sys


def main(path: str) -> str:
    rows = ["| experiment | overrides | seed | steps | region_attribute_accuracy | colour | shape | CIDEr-D (%) | box-blind chance | minutes |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for line in open(path):
        r = json.loads(line)
        if "region_attribute_accuracy" not in r:
            continue
        over = "; ".join(r.get("overrides") or []) or ("landed checkpoint" if "checkpoint" in r else "–")
        rows.append(f"| {r['name']} | `{over}` | {r.get('seed', '–')} | {r.get('steps', 600)} | "
                    f"{r['region_attribute_accuracy']:.3f} | {r['colour_accuracy']:.3f} | {r['shape_accuracy']:.3f} | "
                    f"{100 * r.get('CIDEr-D', float('nan')):.1f} | {r['chance_box_blind']:.3f} | {r['minutes']:.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(main(sys.argv[1]))
