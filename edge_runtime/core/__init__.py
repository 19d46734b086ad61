"""The model core: labels and input spec, image decoding, preprocessing, bundles, the
interpreter, the classifier, trust, metrics, and the shipped models (models/).

Imports nothing else of ours (checked by import-linter, pyproject.toml): train/, convert/,
benchmarks/, capture and lab all build on it, so that the pixels a model is trained on come from
the same code that feeds it on the Pi.
"""
