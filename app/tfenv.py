"""TensorFlow's environment, in one place. It must be set before TensorFlow is first imported
in a process: the CLI sets it when it starts, and a process that imports TensorFlow without
the CLI (the benchmark's measuring child, a test) calls configure() first."""

from __future__ import annotations

import os


def configure():
    # TensorFlow must take the Keras 2 API (tf_keras) that tensorflow-model-optimization needs:
    # with Keras 3, tfmot's QAT wrappers and the saved models' layers do not match.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    # TensorFlow's C++ start-up INFO/WARNING lines (oneDNN, CPU features) say nothing a user acts on.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's pooling allocator for CPU tensors instead of malloc: a training step's large
    # activations are otherwise mapped and unmapped by the C library every step (millions of page
    # faults). Measured on the project's 2-core machine: adapt's training step 2.01 s -> 1.83 s
    # (scripts/adapt_step_time.py), the same int8 file byte for byte (docs/adapt.md, sixth round);
    # the price is a higher peak (the pool keeps what it took). A user's own setting wins.
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
