"""Generate the synthetic world (images + every annotation in its real format).

    python -m data_prep.make_synthetic --out runs/full/data --n-scenes 2000 --image-size 128 --seed 0 \\
        [--card data_prep/README.md] [--workers 2] [--oddity-rate 0.02] [--overwrite]

A non-empty ``--out`` is refused unless ``--overwrite`` is given; then the old world's files (and only
those) are removed first. Bad arguments and a refused ``--out`` end with one line and exit status 2.

See :func:`pixelllm.data.synthetic.generate` for the layout and ``data_prep/README.md`` for the card of
the default run.
"""
from __future__ import annotations

import argparse
import json

from pixelllm.data.synthetic import DEFAULT_ODDITY_RATE, generate


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (e.g. runs/full/data)")
    ap.add_argument("--n-scenes", type=int, default=2000, help="number of images (ids 1..N)")
    ap.add_argument("--image-size", type=int, default=128, help="side of the square images, pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"),
                    help="fractions of images per split")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: CPU count); same output")
    ap.add_argument("--oddity-rate", type=float, default=DEFAULT_ODDITY_RATE,
                    help="probability of each real-world oddity per record")
    ap.add_argument("--card", default=None, help="also write the dataset card (markdown) here")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the world in a non-empty --out (only its files are removed)")
    args = ap.parse_args(argv)
    try:
        stats = generate(args.out, n_scenes=args.n_scenes, image_size=args.image_size, seed=args.seed,
                         split_fractions=tuple(args.splits), workers=args.workers, write_card=args.card,
                         oddity_rate=args.oddity_rate, overwrite=args.overwrite)
    except (FileExistsError, NotADirectoryError, ValueError) as e:
        ap.error(str(e))                                   # one line on stderr, exit status 2
    print(json.dumps({"out": args.out, "splits": stats["splits"], "timing": stats["timing"]}))
    return stats


if __name__ == "__main__":
    main()
