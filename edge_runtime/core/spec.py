"""Labels in model output order and the input specification of a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TypedDict

LABELS: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

# Classes that count towards the white-cell differential (erythroblasts and platelets are
# reported, but a differential is a percentage of leukocytes).
WBC_LABELS: tuple[str, ...] = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")


# What a reviewer may call a cell: the model's eight and the classes a technologist adds that the
# model lacks, named as ICSH recommends for peripheral blood (Palmer et al., "ICSH recommendations
# for the standardization of nomenclature and grading of peripheral blood cell morphological
# features", Int J Lab Hematol 2015). Defined here once: the review page, the store's sign-off
# rules and every report output read them from REVIEW_CLASSES.
#
# role: how a cell of the class counts
#   "wbc"      a white cell: in the differential (its share of the white cells)
#   "other"    counted and reported, not in the differential (erythroblasts per 100 white cells,
#              platelets as a count)
#   "apart"    reported apart, not in the differential nor in the white-cell count (smudge cells:
#              a damaged leukocyte whose type cannot be told)
#   "removed"  not a cell to count: removed from every count (artefact, a cell counted twice)
WBC, OTHER, APART, REMOVED = "wbc", "other", "apart", "removed"


@dataclass(frozen=True)
class ReviewClass:
    label: str  # stored in the log (cells.reviewed_label)
    name: str  # shown and reported
    role: str  # WBC, OTHER, APART or REMOVED
    key: str  # the review page's key for it
    model: bool  # one of the model's classes (LABELS)
    listed: bool = False  # the report lists its cells by number (for a second look)


REVIEW_CLASSES: tuple[ReviewClass, ...] = (
    ReviewClass("basophil", "Basophil", WBC, "1", True),
    ReviewClass("eosinophil", "Eosinophil", WBC, "2", True),
    ReviewClass("erythroblast", "Nucleated red cell (erythroblast)", OTHER, "3", True),
    ReviewClass("ig", "Immature granulocyte", WBC, "4", True),
    ReviewClass("lymphocyte", "Lymphocyte", WBC, "5", True),
    ReviewClass("monocyte", "Monocyte", WBC, "6", True),
    ReviewClass("neutrophil", "Neutrophil (segmented)", WBC, "7", True),
    ReviewClass("platelet", "Platelet", OTHER, "8", True),
    ReviewClass("band_neutrophil", "Band neutrophil", WBC, "n", False),
    ReviewClass("reactive_lymphocyte", "Reactive lymphocyte", WBC, "r", False),
    ReviewClass("blast", "Blast", WBC, "b", False),
    ReviewClass("plasma_cell", "Plasma cell", WBC, "p", False),
    # a white cell the reviewer cannot assign: counted among the white cells (it is one) and listed
    # by number in the report, so that someone looks at it again
    ReviewClass("unidentified", "Unidentified white cell", WBC, "x", False, listed=True),
    ReviewClass("smudge", "Smudge cell", APART, "s", False),
    ReviewClass("artefact", "Not a cell / artefact", REMOVED, "a", False),
    ReviewClass("duplicate", "Duplicate (counted twice)", REMOVED, "d", False),
)
REVIEW_LABELS: tuple[str, ...] = tuple(c.label for c in REVIEW_CLASSES)
# the white cells after review: the model's six and the added white-cell classes
DIFFERENTIAL_LABELS: tuple[str, ...] = tuple(c.label for c in REVIEW_CLASSES if c.role == WBC)
ADDED_WBC_LABELS: tuple[str, ...] = tuple(c.label for c in REVIEW_CLASSES if c.role == WBC and not c.model)
APART_LABELS: tuple[str, ...] = tuple(c.label for c in REVIEW_CLASSES if c.role == APART)
REMOVED_LABELS: tuple[str, ...] = tuple(c.label for c in REVIEW_CLASSES if c.role == REMOVED)
CLASS_BY_LABEL: dict[str, ReviewClass] = {c.label: c for c in REVIEW_CLASSES}


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
    def named(cls, size: int | tuple[int, int], normalisation: str = "symmetric") -> InputSpec:
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
    def from_json(cls, d: dict) -> InputSpec:
        return cls(size=tuple(d["size"]), color=d.get("color", "RGB"), mean=tuple(d["mean"]), std=tuple(d["std"]))
