"""``python -m fcndata.predict``: label and overlay PNGs for images of any size.

    python -m fcndata.predict --model runs/NAME/model.keras --input a.png b.png --out outdir/
    python -m fcndata.predict --model runs/NAME/model.keras --input big.tif --out outdir/ \\
        --set predict.patch_size=128 --set predict.blend=gaussian

The run's ``config.yaml`` next to the model supplies channels, class names and the
``predict:`` section; ``--config`` and ``--set`` override it. For each input ``X.ext`` it
writes ``X_label.png`` (class ids, the input's size) and ``X_overlay.png``. A bad input
(missing, truncated, NaN pixels, channels that cannot be converted, above
``data.max_pixels``: training's checks and messages) is listed on stderr as
``skipped: <reason>`` and the others are still predicted; then the command ends with one
``error:`` line and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fcndata.common import class_rgb


def read_image(path: str | Path, channels: int, max_pixels: int | None = 400_000_000) -> np.ndarray:
    """Reads an image file as [H, W, channels], decoded and checked exactly as training does.

    The same functions as the folder source (:func:`fcndata.decode.read_image`: header
    check against ``max_pixels`` (``data.max_pixels``), ``tf.io`` decoders, OpenCV for
    TIFF only, NaN/inf check, :func:`fcndata.decode.convert_channels`) and the same
    messages, so the pixels match those the model was trained on and a file training
    would reject is rejected here too.

    Raises:
      ValueError: the file is missing, empty, truncated, too large, undecodable, has
        NaN/inf pixels, or its channels cannot be converted; the message names it.
    """
    from fcndata.decode import read_image as decode

    return decode(path, channels, max_pixels=max_pixels)


def model_input(image: np.ndarray) -> np.ndarray:
    """The float32 array the model is fed for ``image``: training's scaling (:func:`fcndata.batching.scale_image`)."""
    from fcndata.batching import scale_image

    return scale_image(image).numpy()


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An RGB uint8 picture of ``labels`` coloured over ``image`` (background left as is)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = img.astype(np.float32)
        img = (255 * (img - img.min()) / max(float(img.max() - img.min()), 1e-6)).astype(np.uint8)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = img[..., :3].astype(np.float32)
    colours = class_rgb(labels).astype(np.float32)  # the previews' class colours
    fg = (labels > 0)[..., None]
    return np.where(fg, (1 - alpha) * img + alpha * colours, img).astype(np.uint8)


def check_model_matches(model, config, model_path) -> None:
    """Refuses a model whose inputs or classes differ from what the recipe says.

    Raises:
      ValueError: channels or number of classes differ; the message names both files.
    """
    inputs = model.inputs[0] if isinstance(model.inputs, (list, tuple)) else model.inputs
    channels, classes = inputs.shape[-1], model.outputs[0].shape[-1]
    recipe = config.source or "the recipe"
    if classes is not None and classes != config.data.num_classes:
        raise ValueError(
            f"{model_path}: the model predicts {classes} classes but {recipe} says data.num_classes="
            f"{config.data.num_classes}; use the config.yaml of the run that trained this model (or --set "
            f"data.num_classes={classes}). Received: model classes={classes}, data.num_classes={config.data.num_classes}"
        )
    if channels is not None and channels != config.data.channels:
        raise ValueError(
            f"{model_path}: the model takes {channels}-channel images but {recipe} says data.channels="
            f"{config.data.channels}; use the config.yaml of the run that trained this model (or --set "
            f"data.channels={channels}). Received: model channels={channels}, data.channels={config.data.channels}"
        )


def main(argv=None) -> int:
    from fcndata import cli

    # quiet before TensorFlow and OpenCV are imported; --config defaults to the model's own recipe
    parser = cli.command_parser("python -m fcndata.predict", "Predict label PNGs with a trained model.", recipe=False)
    from fcndata.config import load_config

    parser.add_argument("--model", required=True, help="model.keras written by fcndata.train")
    parser.add_argument("--input", nargs="+", required=True, help="image files")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", help="recipe (default: config.yaml next to the model)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)

    def body() -> int:
        model_path = Path(args.model)
        if not model_path.is_file():
            raise FileNotFoundError(
                f"--model {model_path}: file not found; pass the model.keras of a run (runs/NAME/model.keras). "
                f"Received: --model {model_path}"
            )
        recipe = args.config or (model_path.parent / "config.yaml")
        config = load_config(recipe if Path(recipe).is_file() else None, args.overrides)
        missing = [name for name in args.input if not Path(name).is_file()]
        if len(missing) == len(args.input):  # nothing to do: say so before loading the model
            raise FileNotFoundError(f"--input: {len(missing)} file(s) not found: {', '.join(missing)}. Received: {missing}")

        import cv2

        from fcndata.infer import predictor_from_config
        from fcndata.saving import load_model

        print(f"fcndata: loading {model_path}...", file=sys.stderr, flush=True)
        model = load_model(model_path, compile=False)
        check_model_matches(model, config, model_path)
        from fcndata.models import model_stride

        predictor = predictor_from_config(
            model, config.predict, masked=config.model.masked, pad_to_multiple=model_stride(config.model)
        )
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        failed = []
        for name in args.input:
            try:
                image = read_image(name, config.data.channels, max_pixels=config.data.max_pixels)
            except ValueError as e:  # a bad input is listed; the others are still predicted
                failed.append(name)
                print(f"skipped: {e}", file=sys.stderr, flush=True)
                continue
            # scaled here with training's rule; float32 passes the predictor's own scaling unchanged
            labels = predictor.predict_labels(model_input(image))
            stem = Path(name).stem
            cv2.imwrite(str(out / f"{stem}_label.png"), labels)
            cv2.imwrite(str(out / f"{stem}_overlay.png"), overlay(image, labels)[..., ::-1])
            print(f"{name} -> {out / (stem + '_label.png')}, {out / (stem + '_overlay.png')}")
        if failed:
            raise ValueError(
                f"predict: {len(failed)} of {len(args.input)} input(s) failed, listed above as 'skipped:' "
                f"({', '.join(failed)}); the other {len(args.input) - len(failed)} were written to {out}/. "
                f"Received: {len(failed)} bad input(s)"
            )
        return 0

    return cli.run(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
