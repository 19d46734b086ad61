"""TensorFlow's environment, in one place. It must be set before TensorFlow is first imported
in a process: the CLI sets it when it starts, and a process that imports TensorFlow without
the CLI (the benchmark's measuring child, a test) calls configure() first."""

from __future__ import annotations

import os
import platform


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
    # oneDNN's CPU kernels, asked for: left unset, TensorFlow on x86 Linux takes them only on CPUs
    # with AVX512_VNNI, AVX512_BF16 or AMX, and otherwise runs its own (Eigen) kernels; on the
    # project's 2-core AMD machine (AVX2, FMA) those ran adapt's training step in 0.76 s against
    # 0.60 s with oneDNN (scripts/adapt_step_time.py, benchmarks/results/adapt_step_time_onednn.json;
    # docs/adapt.md, ninth round). The same arithmetic, rounded differently: a run is not
    # bit-identical to one made without it. Measured on x86 only, so other CPUs keep TensorFlow's
    # own choice. A user's own setting wins.
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
