"""The TensorFlow-free core: labels, preprocessing, bundles, interpreter, capture.

Nothing in this package imports TensorFlow or Keras at module level; train/, convert/ and
benchmarks/ import from here so that the pixels a model is trained on come from the same code
that feeds it on the Pi.
"""
