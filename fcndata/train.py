"""``python -m fcndata.train``: the bundled FCN trainer.

Keras ``fit`` fed by :func:`fcndata.pipeline.build_pipeline`, with checkpoints every
epoch and exact resume, TensorBoard logs, and the run's artifacts in ``runs/NAME/``::

    python -m fcndata.train                                    # default recipe: brain, whole images
    python -m fcndata.train --config pipelines/brain_patchwise.yaml --set train.epochs=5
    python -m fcndata.train --resume runs/brain_fullimage-20261128-140000   # after a crash
    python -m fcndata.train --minutes 10                       # 10 minutes of training, any number of epochs

Time budget: ``train.seconds`` (or ``--minutes M``, which sets it to 60·M and, unless the
recipe or a ``--set`` gives ``train.epochs``, lifts the epochs cap) ends training after that
many seconds of training steps (input pipeline included; validation, checkpoints and logs
not counted). ``train.epochs`` is then a cap, whichever comes first; the learning-rate
schedule (after ``train.warmup_steps``, still steps) runs over the budget's seconds, so
cosine and poly reach 0 when it ends; a resumed run continues the seconds already spent.
``summary.json`` says ``seconds_budget``, ``training_seconds``, ``steps`` and
``epochs_reached``. (The clock, checkpoints and image logs are :mod:`fcndata.callbacks`.)

Checks: after ``model.save``, one validation batch is predicted in inference and in
training mode; a warning line says when their mean IoU differs by more than 0.05
(normalisation statistics that do not transfer to inference) and another when the model
predicts a single class on the validation split; the results are ``summary.json``'s
``checks``. The model is left unchanged by them (:func:`fcndata.evaluation.check_trained_model`).

Every run writes ``config.yaml`` (resolved), ``metrics.csv``, ``logs/`` (TensorBoard, with
prediction images), ``checkpoints/``, ``history.png``, ``preview.png``, ``predictions.png``,
``model.keras`` and ``summary.json`` (and ``skipped.csv`` under ``data.on_error: skip``;
no ``predictions.png`` for a recipe without validation data); the last line printed says
where they are.

Strategies (``train.strategy``): ``one_device``, ``mirrored`` (several GPUs of one host)
and ``multi_worker`` (several hosts, from ``TF_CONFIG``) — ``auto`` picks one. The log and
``summary.json`` give the global batch (``batching.batch_size``) and its share per replica.
Under ``multi_worker`` Keras ``fit`` fails (see :func:`fcndata.distributed.fit_multi_worker`), so
the trainer runs its own step loop with the same model, loss, optimizer, callbacks and
artifacts; the chief (worker 0) writes the run folder, every other worker writes its
checkpoints and copy of the model to ``RUN_DIR/worker<i>/`` (each worker must save).

Resuming: every epoch of the input stream is a pure function of ``(seed, epoch)`` (see
``build_pipeline``), and model, optimizer and epoch are checkpointed at the end of every
epoch, so a run killed mid-epoch restarts that epoch from its first batch and ends where
an uninterrupted run would have.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

DEFAULT_RECIPE = "pipelines/brain_fullimage.yaml"

#: ``fit``'s number of epochs when ``train.epochs`` is null (no cap): the budget stops it.
_NO_CAP = 1_000_000


def fit_verbosity(verbose: int, stream=None) -> int:
    """``train.verbose`` as Keras gets it: 1 (a progress bar) becomes 2 (one line per epoch)
    when output goes to a file or a pipe, where a bar would write every step as a line.

    Example:
      >>> import io
      >>> fit_verbosity(1, io.StringIO()), fit_verbosity(0, io.StringIO()), fit_verbosity(2, io.StringIO())
      (2, 0, 2)
    """
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return 2 if verbose == 1 and not (isatty and isatty()) else verbose


def _default_recipe() -> str | None:
    """The default recipe, found from the working directory or next to the package."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / DEFAULT_RECIPE).is_file():
            return str(base / DEFAULT_RECIPE)
    return None


def _policy(config) -> str:
    from fcndata.distributed import has_gpu

    mp = config.train.mixed_precision
    if mp == "auto":
        return "mixed_float16" if has_gpu() else "float32"
    return "float32" if mp == "off" else mp


_op_determinism = False  # whether this process turned TensorFlow's op determinism on


def _enable_op_determinism() -> None:
    """Turns TensorFlow's op determinism on, once per process.

    Bit-identical reruns and resumes; costs little on CPU, some speed on GPU. TensorFlow's
    public API can switch it on (``tf.config.experimental.enable_op_determinism``) but
    neither read nor switch it off, so the trainer keeps the state here, and once on it
    stays on for the rest of the process.
    """
    global _op_determinism
    import tensorflow as tf

    if not _op_determinism:
        tf.config.experimental.enable_op_determinism()
        _op_determinism = True


def learning_rate_schedule(config, steps_per_epoch: int):
    """The learning rate of ``config.train``: a float or a Keras ``LearningRateSchedule``.

    ``warmup_steps`` ramps the rate linearly from 0 to ``learning_rate`` and then runs the
    schedule over the remaining steps, whatever the schedule. Under ``train.seconds`` the
    schedule runs over the budget's seconds instead: this returns the constant
    ``learning_rate``, and the trainer's budget callback sets the rate before every step.

    Raises:
      ValueError: ``warmup_steps`` is not fewer than the training steps.
    """
    import keras

    from fcndata.schedules import LinearWarmup

    t = config.train
    if t.seconds is not None:
        # The budget's callback sets the rate every step (fcndata.schedules.budget_rate): the
        # optimizer holds it in a variable, which the compiled (and XLA) step reads.
        return t.learning_rate
    total = max(1, t.epochs * steps_per_epoch)
    if t.warmup_steps >= total:
        raise ValueError(
            f"{config.source or 'recipe'}: train.warmup_steps must be fewer than the training steps "
            f"(train.epochs x steps per epoch = {t.epochs} x {steps_per_epoch} = {total}). "
            f"Received: train.warmup_steps={t.warmup_steps}"
        )
    decay = total - t.warmup_steps  # the schedule runs after the warm-up
    lr = t.learning_rate
    if t.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(t.learning_rate, decay)
    elif t.schedule == "poly":
        # The poly schedule of DeepLab / FCN follow-ups: lr * (1 - step/total)^0.9.
        lr = keras.optimizers.schedules.PolynomialDecay(t.learning_rate, decay, end_learning_rate=0.0, power=0.9)
    if t.warmup_steps:
        lr = LinearWarmup(lr, t.warmup_steps, t.learning_rate)
    return lr


def make_optimizer(config, steps_per_epoch: int):
    """The optimizer of ``config.train``, with :func:`learning_rate_schedule`.

    ``weight_decay: null`` is the optimizer's default (none for adam / sgd, Keras' 0.004
    for adamw); a number, 0 included, is used as given.
    """
    import keras

    t = config.train
    lr = learning_rate_schedule(config, steps_per_epoch)
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=t.momentum, weight_decay=t.weight_decay or None)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=0.004 if t.weight_decay is None else t.weight_decay)
    return keras.optimizers.Adam(lr, weight_decay=t.weight_decay or None)


def build_model(config, steps_per_epoch: int = 1):
    """Model, compiled with the recipe's loss, optimizer and masked metrics."""
    from fcndata import losses, metrics, models

    d = config.data
    model = models.model_from_config(config.model, d)
    optimizer = make_optimizer(config, steps_per_epoch)
    model.compile(
        optimizer=optimizer,
        loss=losses.loss_from_config(config.loss, d.num_classes, d.ignore_label),
        # weighted_metrics receive the pipeline's sample_weight (roi × weight), so padding
        # and ignored pixels are never counted.
        weighted_metrics=[
            metrics.MeanIoU(d.num_classes, name="mean_iou"),
            metrics.PixelAccuracy(d.num_classes, name="pixel_accuracy"),
        ],
        jit_compile=config.train.jit_compile,
    )
    return model


def _read_history(path: Path) -> dict[str, list[float]]:
    history: dict[str, list[float]] = {}
    if not path.is_file():
        return history
    with path.open() as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                # "NA": Keras' CSVLogger always adds val_ columns, empty without validation data
                if key != "epoch" and value not in (None, "", "NA"):
                    history.setdefault(key, []).append(float(value))
    return history


def train(config, run_dir: Path | None = None, resume: bool = False, callbacks=()) -> dict:
    """Trains ``config`` into ``run_dir`` (resuming from its checkpoints if ``resume``).

    ``train.seconds`` ends training after that many seconds of training (steps and their
    input pipeline; validation and checkpoints not counted), ``train.epochs`` then being a
    cap (null: none); the learning-rate schedule runs over those seconds, and a resumed run
    continues the seconds spent. After training (and after ``model.save``) the trained
    model is checked (:func:`fcndata.evaluation.check_trained_model`): a warning line if its
    normalisation statistics do not transfer to inference mode or if it predicts one class only.

    A recipe without validation data trains without it: no validation metrics, image
    logging, final evaluation or ``predictions.png``; ``summary.json`` says
    ``"validation": null``. Under ``data.on_error=skip`` the files skipped in any pass are
    printed once at the end and saved in ``skipped.csv`` (path, reason), their number in
    ``summary.json``; if a split has no usable file at all, nothing is trained or written.

    Args:
      config: the recipe.
      run_dir: the run folder (default: :func:`default_run_dir`).
      resume: continue the run in ``run_dir`` from its last checkpoint.
      callbacks: more Keras callbacks for ``fit`` (after the trainer's own).

    Returns:
      The run summary (also written to ``summary.json``): with ``training_seconds`` (the
      budget's clock), ``seconds_budget``, ``steps``, ``epochs_reached`` (steps / steps per
      epoch) and ``checks``.

    Raises:
      ValueError: every file of a split was skipped (the message says how to list them).
    """
    from fcndata import sources
    from fcndata.config import dump_config

    _check_batches_fit_the_model(config)
    with sources.collect_skips() as reports:  # skipped files are printed once, at the end, and saved
        has_validation = sources.has_split(config.data, "validation")
        if config.data.on_error == "skip":
            # Before anything is written: a source whose every file is skipped must not train
            # or save an untrained model. Reads only up to the first usable file of each split.
            _first_usable(config, "train")
            if has_validation:
                _first_usable(config, "validation")
        run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, run_dir / "config.yaml")
        try:
            summary = _train(config, run_dir, resume, has_validation, list(callbacks))
        finally:
            skipped = sources.skipped_files(reports)
            if config.data.on_error == "skip" or skipped:
                _save_skipped(skipped, run_dir)
    if summary is not None and summary.get("chief", True):  # other workers' summaries are not the run's
        summary["skipped"] = len(skipped)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _check_batches_fit_the_model(config) -> None:
    """Refuses batches whose height or width the bundled model cannot take, before anything runs.

    Every variant downsamples by the model's stride (``models.model_stride``: ``2**model.depth``
    on the tiny backbone, 32 otherwise): other sizes fail deep inside the network (a concat
    of mismatched skips) or, for ``fcn32s``, silently predict a smaller map. Batches are
    padded to ``batching.pad_to_multiple``, patches included, so that is the key.
    """
    from fcndata.config import ConfigError
    from fcndata.models import model_stride

    stride = model_stride(config.model)
    multiple = config.batching.pad_to_multiple
    if multiple % stride:
        raise ConfigError(
            f"{config.source or 'recipe'}: batching.pad_to_multiple must be a multiple of {stride} for the bundled "
            f"model: model.variant={config.model.variant} (model.depth={config.model.depth}) downsamples {stride}x, "
            f"and inputs of other sizes fail inside the network. Set batching.pad_to_multiple: {stride} (or "
            f"{2 * stride}, ...); a model of your own fed by build_pipeline can use any multiple. "
            f"Received: batching.pad_to_multiple={multiple}"
        )


def _first_usable(config, split: str) -> None:
    """Raises if ``split`` of the recipe has no usable element (all skipped under on_error=skip)."""
    import dataclasses

    from fcndata import sources

    report = sources.SkipReport(f"{config.data.source} source ({split})")
    data = dataclasses.replace(config.data, cache=False)  # a partial read must not start a cache
    if next(iter(sources.load_source(data, split, report=report).take(1)), None) is None:
        skipped = report.skipped + report.pending
        first = f"; the first: {skipped[0][1]}" if skipped else ""
        raise ValueError(
            f"{config.source or 'recipe'}: no usable file in the {split} split: all {len(skipped)} were skipped "
            f"(data.on_error=skip){first}. Nothing was trained or saved; list them all with: python -m fcndata.inspect "
            f"--config {config.source or 'RECIPE'}{' --split validation' if split == 'validation' else ''}. "
            f"Received: 0 usable files"
        )


def _save_skipped(skipped, run_dir: Path) -> None:
    """Writes ``skipped.csv`` (path, reason) and prints the skipped files once."""
    with (run_dir / "skipped.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(skipped)
    if skipped:
        lines = [f"fcndata: skipped {len(skipped)} file(s) (data.on_error=skip), saved in {run_dir / 'skipped.csv'}:"]
        lines += [f"  {path}: {reason}" for path, reason in skipped]
        print("\n".join(lines), file=sys.stderr, flush=True)


def _train(config, run_dir: Path, resume: bool, has_validation: bool, extra_callbacks=()) -> dict:
    import keras

    from fcndata.batching import to_keras
    from fcndata.callbacks import EpochCheckpoint, epoch_logger, image_logger, training_clock
    from fcndata.distributed import (
        agree_on_mean,
        fit_multi_worker,
        is_chief,
        select_strategy,
        strategy_name,
        task_name,
    )
    from fcndata.evaluation import check_trained_model, evaluate, validation_examples
    from fcndata.pipeline import build_pipeline, steps_per_epoch
    from fcndata.preview import plot_batch, plot_history, plot_predictions

    t = config.train
    chief = is_chief()
    # Every worker saves (TensorFlow's multi-worker rule); only the chief's copy is the run's.
    out_dir = run_dir if chief else run_dir / task_name()
    out_dir.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(t.seed)
    if t.jit_compile:
        # Keras runs XLA only without op determinism: jit_compile wins where it still can.
        if _op_determinism:
            print("fcndata: train.jit_compile=true is ignored: op determinism was turned on earlier in this "
                  "process and cannot be turned off; run this recipe in a new process for XLA", file=sys.stderr)
        elif t.deterministic:
            print("fcndata: train.jit_compile=true runs without op determinism (Keras runs XLA only without it)")
    elif t.deterministic:
        _enable_op_determinism()
    policy = _policy(config)
    keras.mixed_precision.set_global_policy(policy)
    strategy = select_strategy(t.strategy)
    name = strategy_name(strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batching.batch_size
    per_replica = global_batch // replicas if global_batch % replicas == 0 else round(global_batch / replicas, 2)
    print(f"fcndata: strategy {name}, {replicas} replica(s): global batch {global_batch}, {per_replica} per replica"
          + ("" if chief else f"; this is {task_name()}, the chief writes the run folder"), flush=True)
    started = time.time()
    try:
        steps = steps_per_epoch(config)
        with strategy.scope():
            model = build_model(config, steps)
            checkpoint = EpochCheckpoint(model, out_dir / "checkpoints")
        initial_epoch = checkpoint.restore(run_dir / "checkpoints") if resume else 0
        clock = training_clock(config, checkpoint.elapsed,
                               agree=agree_on_mean(strategy) if name == "multi_worker" else None)
        epochs = t.epochs if t.epochs is not None else _NO_CAP
        clock.steps = int(model.optimizer.iterations.numpy())  # what a resumed run has done
        budget_left = t.seconds is None or clock.seconds < t.seconds
        if resume:
            of = f"/{t.epochs}" if t.epochs is not None else ""
            spent = f", {clock.seconds:.1f} s of the {t.seconds:g} s budget spent" if t.seconds is not None else ""
            print(f"fcndata: resuming {run_dir} at epoch {initial_epoch + 1}{of}{spent}", flush=True)
        to_fit = initial_epoch < epochs and budget_left
        # One stream of all remaining epochs, built once; `steps` comes from the source's
        # metadata, so nothing is read before the first step. (Without an epochs cap, the stream
        # is as long as fit's epochs: built lazily, its length costs nothing.)
        train_ds = build_pipeline(config, "train", initial_epoch=initial_epoch,
                                  epochs=max(1, epochs - initial_epoch)) if to_fit else None
        # The eval pipeline is built once per run and serves validation, the image logger
        # and the final evaluation. Its batch count comes from metadata too (no counting pass).
        val_elements = val_ds = None
        if has_validation:
            val_elements = build_pipeline(config, "eval", keras=False)
            val_ds = val_elements.apply(to_keras(masked_input=config.model.masked))
            if t.validation_steps:
                val_ds = val_ds.take(t.validation_steps)
        else:
            print("fcndata: the recipe has no validation data (data.val_images / data.val_tfrecords not set): training "
                  "without validation (no validation metrics, evaluation or predictions.png)", file=sys.stderr, flush=True)
        from fcndata import cli

        # The clock first: the checkpoint saves the seconds it counted up to the epoch's end.
        callbacks = [clock, checkpoint.callback(),
                     # A SIGTERM whose exception TensorFlow swallowed still stops the run here.
                     keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: cli.check_interrupted())]
        if chief:  # the run's metrics, logs and images
            logs = [
                keras.callbacks.CSVLogger(str(run_dir / "metrics.csv"), append=resume and initial_epoch > 0),
                keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), write_graph=False),
            ]
            if has_validation:
                logs.append(image_logger(model, config, run_dir / "logs", val_elements, clock=clock))
            callbacks = [*logs, *callbacks]
        callbacks += list(extra_callbacks)
        verbose = fit_verbosity(t.verbose)
        if t.epochs is None and verbose and name != "multi_worker":  # (that loop prints its own epoch lines)
            callbacks.append(epoch_logger(verbose))
        fit_started = time.time()
        if to_fit and name == "multi_worker":
            fit_multi_worker(strategy, model, config, train_ds, val_ds if chief else None, initial_epoch, epochs,
                             steps, callbacks)
        elif to_fit:
            model.fit(
                train_ds,
                epochs=epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps,
                validation_data=val_ds,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # the pipeline already shuffles, per epoch and seeded
            )
        fit_seconds = round(time.time() - fit_started, 1)
        if not chief:
            model.save(out_dir / "model.keras")
            return {"run_dir": str(out_dir), "strategy": name, "replicas": replicas, "chief": False}
        print(f"fcndata: saving model.keras, {'evaluating on the validation split, ' if has_validation else ''}"
              "drawing the PNGs...", file=sys.stderr, flush=True)
        model.save(run_dir / "model.keras")
        result = checks = None
        if has_validation:
            result = evaluate(model, config, dataset=val_elements.apply(to_keras(masked_input=config.model.masked)))
            # After model.save: the check restores every variable it could change, and the saved
            # model could not be changed by it in any case.
            checks = check_trained_model(model, config, next(iter(val_ds)), result["confusion"])
        history = _read_history(run_dir / "metrics.csv")
        plot_history(history).savefig(run_dir / "history.png", dpi=100)
        # Drawn here, not on the service: one batch needs no job on the workers.
        preview_batch = next(iter(build_pipeline(config.replace(service=None), "train", keras=False, epochs=1)))
        plot_batch(preview_batch, class_names=config.data.names, ignore_label=config.data.ignore_label).savefig(
            run_dir / "preview.png", dpi=100
        )
        if has_validation:
            images, labels, preds = validation_examples(model, config, max_items=4, dataset=val_elements)
            plot_predictions(images, labels, preds, config.data.names).savefig(run_dir / "predictions.png", dpi=100)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    summary = {
        "run_dir": str(run_dir),
        "epochs": t.epochs,
        "steps_per_epoch": steps,
        "seconds": round(time.time() - started, 1),
        "fit_seconds": fit_seconds,  # fit as a whole: training, validation, checkpoints, logs
        "training_seconds": round(clock.seconds, 1),  # training steps only (the budget's clock), all sessions
        "seconds_budget": t.seconds,
        "steps": clock.steps,
        "epochs_reached": round(clock.steps / steps, 2),
        "policy": policy,
        "jit_compile": bool(model.jit_compile),
        "strategy": name,
        "replicas": replicas,
        "global_batch_size": global_batch,
        "per_replica_batch_size": per_replica,
        "validation": result,
        "last_epoch": {k: v[-1] for k, v in history.items() if v},
        "checks": checks,
    }
    return summary


def default_run_dir(config) -> Path:
    """``train.run_dir / train.name``, the name defaulting to the recipe's stem and a timestamp."""
    t = config.train
    stem = Path(config.source).stem if config.source and config.source.endswith(".yaml") else "run"
    return Path(t.run_dir) / (t.name or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")


def _with_minutes(config, minutes: float, overrides, resumed: bool = False):
    """``--minutes M``: ``train.seconds = 60·M``, and no epochs cap unless the recipe file or an
    override gives ``train.epochs`` (a resumed run's ``config.yaml`` keeps its own)."""
    import dataclasses

    import yaml

    from fcndata.config import ConfigError

    if not minutes > 0:
        raise ConfigError(f"--minutes must be > 0 (minutes of training). Received: --minutes {minutes:g}")
    explicit = resumed or any(o.replace(" ", "").startswith("train.epochs=") for o in overrides or ())
    if not explicit and config.given and "train" in config.given and config.source and Path(config.source).is_file():
        raw = yaml.safe_load(Path(config.source).read_text()) or {}
        explicit = isinstance(raw.get("train"), dict) and "epochs" in raw["train"]
    train = dataclasses.replace(config.train, seconds=60.0 * minutes,
                                epochs=config.train.epochs if explicit else None)
    return config.replace(train=train)


def main(argv=None) -> int:
    from fcndata import cli

    parser = cli.command_parser("python -m fcndata.train", "Train the bundled FCN on a recipe.")
    from fcndata.config import load_config

    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument(
        "--minutes", type=float, metavar="M",
        help="train for M minutes of training (train.seconds = 60*M; validation and checkpoints not counted); "
             "the schedule runs over them, and train.epochs is no cap unless the recipe or --set gives it",
    )
    args = parser.parse_args(argv)
    run_dir: Path | None = None

    def interrupted() -> str:
        if run_dir is not None and (run_dir / "config.yaml").is_file():
            return f"interrupted; continue with: python -m fcndata.train --resume {run_dir}"
        return "interrupted before the run folder was written; nothing to resume"

    def body() -> int:
        nonlocal run_dir
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").is_file():
                raise FileNotFoundError(
                    f"--resume {run_dir}: no config.yaml there; pass a folder written by fcndata.train, "
                    "e.g. runs/NAME. Received: --resume " + str(run_dir)
                )
            config = load_config(run_dir / "config.yaml", args.overrides)
        else:
            recipe = args.config or _default_recipe()
            config = load_config(recipe, args.overrides)
            from fcndata.plan import plan_for_training  # a data-only recipe trains its plan

            config = plan_for_training(config, args.overrides, getattr(args, "minutes", None))
            run_dir = default_run_dir(config)
        if args.minutes is not None:
            config = _with_minutes(config, args.minutes, args.overrides, resumed=bool(args.resume))
        summary = train(config, run_dir, resume=bool(args.resume))
        if not summary.get("chief", True):
            print(f"fcndata: this worker's checkpoints and model copy in {summary['run_dir']}/; the chief writes the run")
            return 0
        v = summary["validation"]
        budget = ""
        if summary["seconds_budget"] is not None:
            budget = (f"{summary['steps']} steps, {summary['epochs_reached']:g} epochs in "
                      f"{summary['training_seconds']:.0f} of the {summary['seconds_budget']:g} s budget; ")
        if v is None:
            print(f"fcndata: trained without validation (the recipe has no validation data); {budget}"
                  f"{summary['seconds']:.0f} s")
        else:
            per_class = ", ".join(f"{n} {x:.3f}" if x is not None else f"{n} n/a" for n, x in v["per_class_iou"].items())
            print(f"fcndata: validation mean IoU {v['mean_iou']:.3f} ({per_class}); "
                  f"pixel accuracy {v['pixel_accuracy']:.3f}; {budget}{summary['seconds']:.0f} s "
                  f"({summary['fit_seconds']:.0f} s of training)")
        made = "model.keras, predictions.png, history.png" if v is not None else "model.keras, history.png"
        print(f"fcndata: results in {summary['run_dir']}/ ({made}, summary.json)")
        return 0

    return cli.run(body, debug=args.debug, on_interrupt=interrupted)


if __name__ == "__main__":
    sys.exit(main())
