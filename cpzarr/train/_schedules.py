"""Learning-rate schedules as pure functions of the (fractional) epoch, and their Keras wrapper.

The function form is what tests and plots use; :class:`EpochSchedule` evaluates the same formula
inside the optimizer, once per step, with ``epoch = step / steps_per_epoch`` so that the
cosine warm-up is smooth within an epoch and a resumed run (whose optimizer restores its step
count) continues on the same curve.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from cpzarr.errors import ConfigError

__all__ = ["SCHEDULES", "learning_rate", "EpochSchedule"]

#: Names accepted for ``schedule``.
SCHEDULES = ("constant", "step", "cosine")


def check_schedule(schedule, *, base, epochs, warmup_epochs=5, step_epochs=(), step_values=()):
    """Return the list of problems with a schedule's parameters (empty when it is valid)."""
    problems = []
    if schedule not in SCHEDULES:
        problems.append(f"schedule: {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if base is None or base <= 0:
        problems.append(f"learning_rate: must be > 0, got {base!r}")
    if schedule == "step":
        if len(step_values) != len(step_epochs) + 1:
            problems.append(
                "step_values: a step schedule needs one value more than step_epochs "
                f"(the value before the first boundary), got {len(step_values)} values for "
                f"{len(step_epochs)} epochs"
            )
        if list(step_epochs) != sorted(step_epochs):
            problems.append(f"step_epochs: must increase, got {list(step_epochs)}")
    if schedule == "cosine" and not 0 <= warmup_epochs < epochs:
        problems.append(
            f"warmup_epochs: must be in [0, epochs={epochs}), got {warmup_epochs!r}"
        )
    return problems


def learning_rate(
    epoch: float,
    schedule: str = "constant",
    *,
    base: float = 0.02,
    epochs: int = 30,
    warmup_epochs: float = 5,
    step_epochs: Sequence[float] = (),
    step_values: Sequence[float] = (),
) -> float:
    """Learning rate at ``epoch`` (counted from 0, fractions allowed) under a schedule.

    Parameters
    ----------
    epoch : float
        Training time in epochs; ``1.5`` is halfway through the second epoch.
    schedule : {"constant", "step", "cosine"}
        ``constant``: ``base`` throughout. ``step``: ``step_values[i]`` from epoch
        ``step_epochs[i-1]`` on (``step_values[0]`` before the first boundary), as Keras'
        ``PiecewiseConstantDecay``. ``cosine`` (DeepProfiler's best): a linear warm-up from 0 to
        ``base`` over ``warmup_epochs``, then ``base · ½(1 + cos(π · (epoch − warmup) / (epochs −
        warmup)))`` down to 0 at ``epochs``.
    base : float
        Peak learning rate (``constant`` and ``cosine``).
    epochs : int
        Length of the run (``cosine``).
    warmup_epochs : float
        Length of the linear warm-up (``cosine``).
    step_epochs, step_values : sequence of float
        Boundaries and values of a ``step`` schedule.

    Returns
    -------
    float

    Examples
    --------
    >>> learning_rate(2.5, "cosine", base=0.02, epochs=30, warmup_epochs=5)
    0.01
    >>> learning_rate(12, "step", step_epochs=[10, 20], step_values=[0.1, 0.01, 0.001])
    0.01
    """
    problems = check_schedule(
        schedule, base=base, epochs=epochs, warmup_epochs=warmup_epochs,
        step_epochs=step_epochs, step_values=step_values,
    )
    if problems:
        raise ConfigError("invalid learning-rate schedule", problems)
    if schedule == "constant":
        return float(base)
    if schedule == "step":
        passed = sum(1 for boundary in step_epochs if epoch >= boundary)
        return float(step_values[passed])
    if epoch < warmup_epochs:
        return float(base * epoch / warmup_epochs)
    progress = min(1.0, (epoch - warmup_epochs) / (epochs - warmup_epochs))
    return float(base * 0.5 * (1.0 + math.cos(math.pi * progress)))


@functools.cache
def _keras_schedule_class():
    # Defined lazily so that importing cpzarr.train does not import Keras.
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="cpzarr")
    class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """:func:`learning_rate` evaluated per optimizer step (``epoch = step / steps_per_epoch``)."""

        def __init__(self, steps_per_epoch, schedule="constant", base=0.02, epochs=30,
                     warmup_epochs=5, step_epochs=(), step_values=()):
            self.steps_per_epoch = int(steps_per_epoch)
            self.schedule = schedule
            self.base = float(base)
            self.epochs = int(epochs)
            self.warmup_epochs = float(warmup_epochs)
            self.step_epochs = [float(e) for e in step_epochs]
            self.step_values = [float(v) for v in step_values]
            problems = check_schedule(
                schedule, base=self.base, epochs=self.epochs, warmup_epochs=self.warmup_epochs,
                step_epochs=self.step_epochs, step_values=self.step_values,
            )
            if problems:
                raise ConfigError("invalid learning-rate schedule", problems)

        def __call__(self, step):
            epoch = ops.cast(step, "float32") / float(self.steps_per_epoch)
            if self.schedule == "constant":
                return ops.convert_to_tensor(self.base, "float32")
            if self.schedule == "step":
                lr = ops.convert_to_tensor(self.step_values[0], "float32")
                for boundary, value in zip(self.step_epochs, self.step_values[1:]):
                    lr = ops.where(epoch >= boundary, value, lr)
                return lr
            warm = self.base * epoch / max(self.warmup_epochs, 1e-12)
            progress = ops.clip(
                (epoch - self.warmup_epochs) / float(self.epochs - self.warmup_epochs), 0.0, 1.0
            )
            decay = self.base * 0.5 * (1.0 + ops.cos(math.pi * progress))
            return ops.where(epoch < self.warmup_epochs, warm, decay)

        def get_config(self):
            return dict(
                steps_per_epoch=self.steps_per_epoch, schedule=self.schedule, base=self.base,
                epochs=self.epochs, warmup_epochs=self.warmup_epochs,
                step_epochs=self.step_epochs, step_values=self.step_values,
            )

    return EpochSchedule


def __getattr__(name):
    if name == "EpochSchedule":
        return _keras_schedule_class()
    raise AttributeError(name)
