"""Learning-rate schedules that Keras does not ship.

Example:
  >>> import keras
  >>> cosine = keras.optimizers.schedules.CosineDecay(1.0, decay_steps=10)
  >>> lr = LinearWarmup(cosine, warmup_steps=4, target=1.0)
  >>> [round(float(lr(s)), 3) for s in (0, 2, 4, 9, 14)]
  [0.0, 0.5, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math

import keras
from keras import ops


def budget_rate(learning_rate: float, schedule: str, warmup_steps: int, fraction: float, step: int) -> float:
    """The learning rate after ``fraction`` of a time budget and ``step`` steps.

    For training to a wall-clock budget (``train.seconds``): the schedule (``constant``,
    ``cosine`` or ``poly``, as in :func:`fcndata.train.learning_rate_schedule`) runs over
    the budget's seconds, so cosine and poly reach 0 exactly when the budget ends; the first
    ``warmup_steps`` steps (still counted in steps) scale it by ``step / warmup_steps``.

    Args:
      learning_rate: the initial rate (``train.learning_rate``).
      schedule: ``constant``, ``cosine`` or ``poly``.
      warmup_steps: steps of linear warm-up (0: none).
      fraction: the share of the budget spent, clipped to [0, 1].
      step: the number of steps done.

    Example:
      >>> budget_rate(0.01, "cosine", 0, 0.0, 10), round(budget_rate(0.01, "cosine", 0, 0.5, 10), 6)
      (0.01, 0.005)
      >>> budget_rate(0.01, "poly", 0, 1.0, 10), budget_rate(0.01, "constant", 4, 0.9, 1)
      (0.0, 0.0025)
    """
    fraction = min(max(fraction, 0.0), 1.0)
    if schedule == "cosine":
        lr = learning_rate * 0.5 * (1.0 + math.cos(math.pi * fraction))
    elif schedule == "poly":
        lr = learning_rate * (1.0 - fraction) ** 0.9
    else:
        lr = learning_rate
    if warmup_steps and step < warmup_steps:
        lr *= step / warmup_steps
    return float(lr)


@keras.saving.register_keras_serializable(package="fcndata")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """``target · step / warmup_steps`` for the first ``warmup_steps``, then ``schedule(step − warmup_steps)``.

    Wraps any schedule (or a constant learning rate), so ``train.warmup_steps`` works
    with ``constant``, ``cosine`` and ``poly`` alike.

    Args:
      schedule: a ``LearningRateSchedule`` or a float; it starts where the warm-up ends.
      warmup_steps: the number of warm-up steps (>= 1).
      target: the rate reached at the end of the warm-up (the schedule's initial rate).
    """

    def __init__(self, schedule, warmup_steps: int, target: float):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"LinearWarmup: warmup_steps must be an int >= 1. Received: warmup_steps={warmup_steps!r}")
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.target = float(target)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = self.target * step / float(self.warmup_steps)
        after = ops.maximum(step - float(self.warmup_steps), 0.0)
        rest = self.schedule(after) if callable(self.schedule) else self.schedule
        return ops.where(step < float(self.warmup_steps), warmup, ops.cast(rest, "float32"))

    def get_config(self):
        schedule = self.schedule
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule = keras.saving.serialize_keras_object(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps, "target": self.target}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)
