#!/usr/bin/env python
"""Generate the embedded synthetic COCO dataset into the cache and print where it is.

Usage: ``python tools/generate_data.py [--root DIR] [--seed N] [--force]``. Training and tests
generate it on first use anyway; this tool pre-generates it and shows per-class counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from distill.data.synthetic_coco import (  # noqa: E402
    DEFAULT_SEED,
    EMBEDDED_CLASSES,
    ensure_embedded_dataset,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default=None, help="cache root ($DISTILL_CACHE or ~/.cache/distill)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="base seed")
    parser.add_argument("--force", action="store_true", help="delete and regenerate")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    paths = ensure_embedded_dataset(args.root, seed=args.seed, force=args.force)
    print(f"dataset: {paths['dataset_dir']}  ({time.perf_counter() - start:.1f} s)")
    for split, entry in paths.items():
        if split == "dataset_dir":
            continue
        coco = json.loads(Path(entry["json_file"]).read_text())
        counts = Counter(ann["category_id"] for ann in coco["annotations"])
        empty = len(
            {im["id"] for im in coco["images"]} - {a["image_id"] for a in coco["annotations"]}
        )
        print(f"[{split}] json_file:  {entry['json_file']}")
        print(f"[{split}] image_root: {entry['image_root']}")
        print(
            f"[{split}] {len(coco['images'])} images ({empty} without objects), "
            f"{len(coco['annotations'])} instances"
        )
        print(f"[{split}] backgrounds: {coco['info']['background_source']}")
        for cat_id, name in enumerate(EMBEDDED_CLASSES, start=1):
            print(f"    {cat_id} {name:<9} {counts.get(cat_id, 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
