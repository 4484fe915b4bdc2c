"""Keras' own noise, silenced where cpzarr calls it."""

import contextlib
import warnings


@contextlib.contextmanager
def saving_weights():
    """Silence NumPy 2's ``__array__ ... copy keyword`` DeprecationWarning while Keras saves.

    Keras (3.x on TensorFlow) turns every variable into an array with ``np.array(tensor)`` when it
    saves weights or a model, and NumPy 2 warns once per variable (about 600 lines in the test
    run). The warning concerns Keras and TensorFlow, not the values saved.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword",
                                category=DeprecationWarning)
        yield
