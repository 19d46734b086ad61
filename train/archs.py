"""One registry of architectures: name -> builder, normalisation, defaults, options.

The registry is the only list of architectures: `train --arch`, the benchmark's default models
and its report's row order all read it, in registration order (the shipped network first).

Every model is a Keras application backbone (tf_keras, so tfmot QAT works on it) with the
paper's head: global average pooling, dropout, dense softmax over the labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec


@dataclass(frozen=True)
class Arch:
    name: str
    backbone: Callable  # (input_shape, weights, **kw) -> tf_keras.Model without top
    imagenet_normalisation: str  # what the ImageNet weights expect
    lr: float  # default learning rate (VGG has no BatchNorm and needs a smaller one from scratch)
    options: dict = field(default_factory=dict)  # the keyword options it takes, with their defaults
    paper: str | None = None  # the row of the paper's Table 2 it stands for (vgg16_bn -> vgg16)
    variant: str = ""  # how it differs from that row's network, for the paper table
    pretrained: bool = True  # whether ImageNet weights exist for it


REGISTRY: dict[str, Arch] = {}


def register(
    name: str,
    imagenet_normalisation: str,
    lr: float,
    paper: str | None = None,
    variant: str = "",
    pretrained: bool = True,
    **options,
):
    def deco(fn):
        REGISTRY[name] = Arch(name, fn, imagenet_normalisation, lr, options, paper or name, variant, pretrained)
        return fn

    return deco


def _apps():
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    return tf_keras.applications


@register("mobilenetv2", "symmetric", 1e-3, width=1.0)
def _mobilenetv2(input_shape, weights, width=1.0):
    return _apps().MobileNetV2(input_shape=input_shape, alpha=width, include_top=False, weights=weights)


@register("resnet50", "caffe", 1e-3)
def _resnet50(input_shape, weights):
    return _apps().ResNet50(input_shape=input_shape, include_top=False, weights=weights)


@register("vgg16", "caffe", 1e-4)
def _vgg16(input_shape, weights):
    return _apps().VGG16(input_shape=input_shape, include_top=False, weights=weights)


@register("vgg19", "caffe", 1e-4)
def _vgg19(input_shape, weights):
    return _apps().VGG19(input_shape=input_shape, include_top=False, weights=weights)


# VGG with BatchNorm after every convolution (VGG16-BN/VGG19-BN, as torchvision's vgg16_bn): the
# plain VGG trained from scratch learns slowly and unevenly (issue 30: 60% and 38% after their
# time budgets), BatchNorm lets it take MobileNetV2's learning rate. No ImageNet weights exist in
# tf_keras for these, so they train from scratch only.
_VGG_BLOCKS = {"vgg16_bn": (2, 2, 3, 3, 3), "vgg19_bn": (2, 2, 4, 4, 4)}


def _vgg_bn(name, input_shape, weights):
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    layers = tf_keras.layers
    x = inputs = layers.Input(input_shape)
    for block, (convs, filters) in enumerate(zip(_VGG_BLOCKS[name], (64, 128, 256, 512, 512)), 1):
        for i in range(1, convs + 1):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{i}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{i}")(x)
            x = layers.ReLU(name=f"block{block}_relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return tf_keras.Model(inputs, x, name=name)


@register(
    "vgg16_bn", "symmetric", 1e-3, paper="vgg16", variant="VGG16-BN: BatchNorm after each convolution", pretrained=False
)
def _vgg16_bn(input_shape, weights):
    return _vgg_bn("vgg16_bn", input_shape, weights)


@register(
    "vgg19_bn", "symmetric", 1e-3, paper="vgg19", variant="VGG19-BN: BatchNorm after each convolution", pretrained=False
)
def _vgg19_bn(input_shape, weights):
    return _vgg_bn("vgg19_bn", input_shape, weights)


def get(name: str) -> Arch:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


# CLI spelling of each option an architecture may take (train --width -> width).
OPTION_FLAGS = {"width": "--width"}


def check_options(arch: str, **options):
    """Refuse an option the architecture does not take (e.g. --width on resnet50) instead of
    dropping it: a run that silently ignores a setting is recorded as if it had used it."""
    a = get(arch)
    bad = [k for k, v in options.items() if v is not None and k not in a.options]
    if bad:
        flags = ", ".join(OPTION_FLAGS.get(k, k) for k in bad)
        takes = ", ".join(OPTION_FLAGS.get(k, k) for k in a.options) or "none"
        raise ValueError(f"{flags}: not an option of {arch} (its options: {takes})")


def input_spec(arch: str, size: int, weights: str) -> InputSpec:
    """ImageNet weights get the normalisation they were trained with; from scratch, [-1, 1]."""
    a = get(arch)
    return InputSpec.named(size, a.imagenet_normalisation if weights == "imagenet" else "symmetric")


class WeightsUnavailable(RuntimeError):
    pass


def build(
    arch: str,
    size: int,
    weights: str = "none",
    dropout: float = 0.2,
    bn_momentum: float | None = 0.9,
    n_classes: int = len(LABELS),
    **options,
):
    """Backbone + head. weights: 'imagenet', 'none' or a path to a .keras/.h5 model or weights."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    check_options(arch, **options)
    a = get(arch)
    kw = {**a.options, **{k: v for k, v in options.items() if v is not None}}
    load_path = None
    if weights in (None, "none"):
        w = None
    elif weights == "imagenet":
        w = "imagenet"
    else:
        w, load_path = None, weights
    if w == "imagenet" and not a.pretrained:
        raise WeightsUnavailable(f"{arch} has no ImageNet weights: train it from scratch (--weights none)")
    try:
        base = a.backbone((size, size, 3), w, **kw)
    except Exception as e:  # offline: URLError/HTTPError/"URL fetch failure"
        if w == "imagenet":
            raise WeightsUnavailable(
                f"cannot load ImageNet weights for {arch} ({type(e).__name__}: {e}); "
                "they are downloaded on first use: connect to the internet once, "
                "or train from scratch with --weights none"
            ) from None
        raise
    if bn_momentum is not None:
        # Keras's default 0.99/0.999 moving averages lag far behind weights that change fast
        # from scratch, so inference-mode accuracy stays near chance for thousands of steps.
        for layer in base.layers:
            if isinstance(layer, tf_keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    inputs = tf_keras.Input((size, size, 3), name="image")
    x = base(inputs)
    x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = tf_keras.layers.Dropout(dropout, name="dropout")(x)
    # float32 output even under mixed precision, for a stable softmax.
    outputs = tf_keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs")(x)
    model = tf_keras.Model(inputs, outputs, name=arch)
    if load_path:
        if str(load_path).endswith(".keras"):
            src = tf_keras.models.load_model(load_path, compile=False)
            model.set_weights(src.get_weights())
        else:
            model.load_weights(load_path)
    return model
