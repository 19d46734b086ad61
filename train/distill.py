"""Knowledge distillation (Hinton et al. 2015): a student learns the teacher's soft targets.

The targets of one image are a row [label, teacher logit 1..k]; the loss is
    w * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - w) * CE(label, student)
with the student's logits taken as the log of its softmax output (the same up to a constant,
which a softmax ignores), so every architecture keeps its plain softmax head and exports as is.
Both objects are registered so that a checkpoint of a distilled run resumes by name.
"""

from __future__ import annotations

import numpy as np


def distill_targets(labels, teacher_logits) -> np.ndarray:
    """(N,) labels and (N, k) teacher logits -> (N, 1 + k) float32 rows."""
    labels = np.asarray(labels, np.float32).reshape(-1, 1)
    return np.concatenate([labels, np.asarray(teacher_logits, np.float32)], axis=1)


_OBJECTS = None


def distill_objects():
    """(DistillLoss class, accuracy function), registered with tf_keras once."""
    global _OBJECTS
    if _OBJECTS is not None:
        return _OBJECTS
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf
    import tf_keras

    @tf_keras.saving.register_keras_serializable(package="edge_bloodcls")
    class DistillLoss(tf_keras.losses.Loss):
        def __init__(self, temperature=2.0, weight=0.7, name="distill", **kw):
            super().__init__(name=name, **kw)
            self.temperature, self.weight = float(temperature), float(weight)

        def call(self, y_true, y_pred):
            t = self.temperature
            label = tf.cast(y_true[:, 0], tf.int32)
            teacher = tf.nn.softmax(y_true[:, 1:] / t)
            log_student = tf.math.log(tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-12, 1.0))
            soft = tf.nn.log_softmax(log_student / t)
            kl = tf.reduce_sum(teacher * (tf.math.log(teacher + 1e-12) - soft), axis=-1)
            hard = tf_keras.losses.sparse_categorical_crossentropy(label, y_pred)
            return self.weight * t * t * kl + (1.0 - self.weight) * hard

        def get_config(self):
            return {**super().get_config(), "temperature": self.temperature, "weight": self.weight}

    @tf_keras.saving.register_keras_serializable(package="edge_bloodcls")
    def distill_accuracy(y_true, y_pred):
        return tf.cast(tf.equal(tf.cast(y_true[:, 0], tf.int64), tf.argmax(y_pred, axis=-1)), tf.float32)

    _OBJECTS = (DistillLoss, distill_accuracy)
    return _OBJECTS
