"""``python -m fcndata.preview``: writes a PNG of the first batch of a recipe's pipeline."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fcndata.preview.batches import save_batch_preview


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fcndata.preview``: writes a PNG of the first batch of a recipe's pipeline."""
    from fcndata import cli

    parser = cli.command_parser(
        "python -m fcndata.preview", "Write a PNG of the first batch a recipe's pipeline yields: image, label, roi, loss weight."
    )
    from fcndata.config import load_config

    parser.add_argument("--out", default="preview.png", help="PNG to write (default: preview.png)")
    parser.add_argument(
        "--mode",
        choices=("train", "eval"),
        default="train",
        help="train: augmented, sampled training batches; eval: validation batches",
    )
    parser.add_argument(
        "--max-items", type=int, default=4, help="elements (rows) to draw (default: 4)"
    )
    parser.add_argument("--dpi", type=float, default=100, help="dots per inch (default: 100)")
    args = parser.parse_args(argv)
    if args.max_items < 1:
        parser.error(f"--max-items must be >= 1. Received: --max-items={args.max_items}")

    def body() -> int:
        config = load_config(args.config, args.overrides)
        if args.mode == "eval" and not config.data.has_validation:
            raise ValueError(
                f"{config.source}: the recipe has no validation data (data.val_images / data.val_tfrecords is "
                "not set). Received: --mode eval"
            )
        print("fcndata: building the pipeline and drawing its first batch...", file=sys.stderr, flush=True)
        # Imported here: it pulls in TensorFlow, and `import fcndata.preview` should stay light.
        from fcndata.pipeline import build_pipeline

        dataset = build_pipeline(config, args.mode, keras=False)
        path = save_batch_preview(
            dataset,
            args.out,
            class_names=config.data.names,
            max_items=args.max_items,
            ignore_label=config.data.ignore_label,
            palette=config.data.palette,
            dpi=args.dpi,
        )
        print(path)
        return 0

    return cli.run(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
