"""Labels in model output order and the input specification of a model."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TypedDict

LABELS: tuple[str, ...] = (
    "basophil", "eosinophil", "erythroblast", "ig",
    "lymphocyte", "monocyte", "neutrophil", "platelet",
)

# Classes that count towards the white-cell differential (erythroblasts and platelets are
# reported, but a differential is a percentage of leukocytes).
WBC_LABELS: tuple[str, ...] = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")


class Normalisation(TypedDict):
    color: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Normalisations by name: model_input = (rgb_or_bgr_pixel - mean) / std, pixels in 0..255.
#   "symmetric": [-1, 1], MobileNetV2's own and our choice for every model trained from scratch.
#   "caffe": BGR, ImageNet mean subtracted, unscaled: what VGG/ResNet50 ImageNet weights expect.
NORMALISATIONS: dict[str, Normalisation] = {
    "symmetric": {"color": "RGB", "mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5)},
    "caffe": {"color": "BGR", "mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0)},
}


@dataclass(frozen=True)
class InputSpec:
    """How an RGB uint8 image becomes the float input of a model."""

    size: tuple[int, int]  # (height, width)
    color: str = "RGB"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)

    @classmethod
    def named(cls, size: int | tuple[int, int], normalisation: str = "symmetric") -> "InputSpec":
        if isinstance(size, int):
            size = (size, size)
        h, w = size
        norm = NORMALISATIONS[normalisation]
        return cls(size=(h, w), color=norm["color"], mean=norm["mean"], std=norm["std"])

    def to_json(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "InputSpec":
        return cls(size=tuple(d["size"]), color=d.get("color", "RGB"),
                   mean=tuple(d["mean"]), std=tuple(d["std"]))
