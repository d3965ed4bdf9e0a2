"""Learning-rate schedules that Keras does not ship.

Example:
  >>> import keras
  >>> cosine = keras.optimizers.schedules.CosineDecay(1.0, decay_steps=10)
  >>> lr = LinearWarmup(cosine, warmup_steps=4, target=1.0)
  >>> [round(float(lr(s)), 3) for s in (0, 2, 4, 9, 14)]
  [0.0, 0.5, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import keras
from keras import ops


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
