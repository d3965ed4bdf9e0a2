"""The Keras callbacks of the trainer's ``fit`` (and of its multi-worker loop).

:class:`EpochCheckpoint` (model, optimizer, epoch and training seconds saved at the end
of every epoch, restored on resume), :func:`training_clock` (the training seconds and the
``train.seconds`` budget), :func:`epoch_logger` (epoch lines without a total) and
:func:`image_logger` (validation predictions in TensorBoard).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

#: The clock the training budget is measured with; tests replace it with a fake one.
_clock = time.monotonic


class EpochCheckpoint:
    """Saves model, optimizer, the number of finished epochs and the training seconds spent
    (``elapsed``, what a ``train.seconds`` budget resumes from) at the end of every epoch."""

    def __init__(self, model, directory: Path):
        import tensorflow as tf

        model.optimizer.build(model.trainable_variables)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.elapsed = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=self.epoch,
                                              elapsed=self.elapsed)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=2)

    def restore(self, directory: Path | None = None) -> int:
        """Restores the latest checkpoint (of ``directory``: the chief's, on another worker)."""
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(directory)) if directory is not None else self.manager.latest_checkpoint
        if latest is None:
            return 0
        # expect_partial: a checkpoint written before the elapsed seconds were saved restores with 0
        self.checkpoint.restore(latest).assert_existing_objects_matched().expect_partial()
        return int(self.epoch.numpy())

    def callback(self):
        import keras

        outer = self

        class Save(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                outer.epoch.assign(epoch + 1)
                outer.manager.save(checkpoint_number=epoch + 1)

        return Save()


def training_clock(config, elapsed, agree=None):
    """A callback that measures training seconds and, under ``train.seconds``, runs the budget.

    Each step is timed from ``on_train_batch_begin`` to ``on_train_batch_end`` with
    :data:`_clock`: the step and its input pipeline (``fit`` reads the next batch inside the
    step), not validation, checkpoints or logging at the end of an epoch. The running total
    lives in ``elapsed`` (a variable of the epoch checkpoint, so a resumed run continues it).
    With ``train.seconds``, before every step the optimizer's rate is set to
    :func:`fcndata.schedules.budget_rate` of the budget's share spent, and after the step
    that spends the budget ``model.stop_training`` ends ``fit`` (or the multi-worker loop).

    Args:
      config: the run's recipe.
      elapsed: a float64 ``tf.Variable`` holding the training seconds spent (restored on resume).
      agree: maps this process's running total to the one every worker uses (multi-worker:
        the mean over workers, so all set the same rate and stop at the same step).

    The callback's ``steps`` counts the optimizer's steps (from its ``iterations`` at the start).
    """
    import keras

    from fcndata.schedules import budget_rate

    t = config.train

    class TrainingClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = float(elapsed.numpy())
            self.steps = 0
            self.rate = None
            self.started = None

        def on_train_begin(self, logs=None):
            self.seconds = float(elapsed.numpy())
            self.steps = int(self.model.optimizer.iterations.numpy())

        def on_train_batch_begin(self, batch, logs=None):
            if t.seconds is not None:
                rate = budget_rate(t.learning_rate, t.schedule, t.warmup_steps, self.seconds / t.seconds, self.steps)
                if rate != self.rate:  # an assignment per change, not per step, for the constant schedule
                    self.model.optimizer.learning_rate = rate
                    self.rate = rate
            self.started = _clock()

        def on_train_batch_end(self, batch, logs=None):
            seconds = self.seconds + (_clock() - self.started)
            self.seconds = float(agree(seconds)) if agree is not None else seconds
            self.steps += 1
            elapsed.assign(self.seconds)
            if t.seconds is not None and self.seconds >= t.seconds:
                self.model.stop_training = True

        def spent(self) -> float | None:
            """The budget's share spent, or None without ``train.seconds``."""
            return None if t.seconds is None else min(1.0, self.seconds / t.seconds)

    return TrainingClock()


def epoch_logger(verbose: int):
    """Keras' progress bar without the total epochs (``fit`` runs a huge number when
    ``train.epochs`` is null and ``train.seconds`` stops it): ``Epoch 3``, not ``Epoch 3/1000000``."""
    import keras

    class EpochLogger(keras.callbacks.ProgbarLogger):
        def on_epoch_begin(self, epoch, logs=None):
            self.epochs = 0  # Keras prints "Epoch i/N" only when N > 1
            super().on_epoch_begin(epoch, logs)
            if self.verbose:
                print(f"Epoch {epoch + 1}", flush=True)

    return EpochLogger()


def image_logger(model, config, log_dir: Path, dataset=None, times: int = 5, clock=None):
    """A callback writing validation predictions to TensorBoard ``times`` times per run.

    Measured on the brain recipe: rebuilding the validation pipeline and drawing the
    figure took ~3.4 s, a quarter of a 14-step epoch, when done every epoch. So the
    example images are read once (from ``dataset``, the run's eval pipeline of element
    dicts, when given), and the figure is drawn on ``times`` evenly spaced epochs
    (always the last), from the first validation batch kept in memory. Under
    ``train.seconds`` the ``times`` points are spread over the budget instead (``clock``: the
    run's :func:`training_clock`).
    """
    import keras
    import matplotlib.pyplot as plt
    import tensorflow as tf

    from fcndata.batching import keras_inputs
    from fcndata.pipeline import build_pipeline
    from fcndata.preview import plot_predictions

    writer = tf.summary.create_file_writer(str(log_dir / "predictions"))
    epochs = config.train.epochs
    every = max(1, (epochs or 1) // times)
    next_share = [1.0 / times]
    cached = []

    def due(epoch) -> bool:
        if model.stop_training or epoch + 1 == epochs:  # the last epoch
            return True
        spent = clock.spent() if clock is not None else None
        if spent is None:
            return not (epoch + 1) % every
        if spent < next_share[0]:
            return False
        while next_share[0] <= spent:
            next_share[0] += 1.0 / times
        return True

    class Images(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if not due(epoch):
                return
            if not cached:
                batch = next(iter(build_pipeline(config, "eval", keras=False) if dataset is None else dataset))
                inputs, _, _ = keras_inputs(batch, masked_input=config.model.masked, ignore_label=config.data.ignore_label)
                extents = [tuple(int(v) for v in hw) for hw in batch["source_shape"][:3]]
                images = [batch["image"][i].numpy()[:h, :w] for i, (h, w) in enumerate(extents)]
                labels = [batch["label"][i].numpy()[:h, :w] for i, (h, w) in enumerate(extents)]
                cached.extend([inputs, extents, images, labels])
            inputs, extents, images, labels = cached
            pred = tf.argmax(model(inputs, training=False), -1).numpy()
            preds = [pred[i][:h, :w] for i, (h, w) in enumerate(extents)]
            fig = plot_predictions(images, labels, preds, config.data.names)
            fig.canvas.draw()
            pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
            with writer.as_default():
                tf.summary.image("validation/image_truth_prediction", pixels[None], step=epoch)
            writer.flush()
            plt.close(fig)

    return Images()
