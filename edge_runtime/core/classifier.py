"""The runtime core, top to bottom: bundle -> interpreter -> image -> input tensor -> probabilities.

    clf = Classifier.load()                       # the bundled default int8 model
    result = clf.classify("cell.jpg")             # -> Prediction(label, confidence, probs, ...)

The model gives probabilities and its pooled features; with the bundle's trust statistics the
probabilities are calibrated (temperature), the features give an out-of-distribution score (and,
where the bundle carries one, the input's colours a second one), and `review` says a human should
look (low confidence, or unlike the training cells), with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .bundle import Bundle, BundleError, load_bundle
from .cellhead import cell_features
from .interpreter import make_interpreter
from .preprocess import pixels_of, prepare
from .trust import colour_features, review_reason

# Below this confidence a result is flagged for a human to look at, for bundles that do not carry
# a threshold chosen on validation (older ones); newer bundles carry their own (trust section).
DEFAULT_REVIEW_THRESHOLD = 0.80


@dataclass
class Prediction:
    label: str
    confidence: float
    probs: dict[str, float]
    latency_ms: float  # interpreter invoke only
    review: bool  # a human should look: low calibrated confidence, or out of distribution
    top: list[tuple[str, float]] = field(default_factory=list)
    ood_score: float | None = None  # distance to the training cells; None: the bundle has no trust statistics
    ood: bool = False  # either score above its threshold: unlike anything the model was trained on
    review_reason: str = ""  # why review is set, e.g. "low confidence 0.62 < 0.91; out of distribution"
    colour_score: float | None = None  # distance of the crop's colours; None: the bundle has no colour statistic


class Classifier:
    def __init__(
        self, bundle: Bundle, threads: int | None = None, device: str = "cpu", review_threshold: float | None = None
    ):
        self.bundle = bundle
        self.labels = bundle.labels
        self.spec = bundle.spec
        self.trust = bundle.trust
        self.head = bundle.head
        self.interpreter, self.info = make_interpreter(bundle.tflite, threads, device)
        self._in = self.interpreter.get_input_details()[0]
        self._out, self._feat = self._outputs(self.interpreter.get_output_details())
        self._check_model()
        # The bundle's threshold was chosen on validation for a target accepted accuracy; an
        # explicit one (--review-threshold) overrides it.
        if review_threshold is None:
            review_threshold = (
                self.trust.review_threshold
                if self.trust and self.trust.review_threshold is not None
                else DEFAULT_REVIEW_THRESHOLD
            )
        self.review_threshold = review_threshold
        # Quantized tensors: real = scale * (q - zero_point).
        self._in_q = self._in["quantization"] if self._in["dtype"] != np.float32 else None

    def _outputs(self, details):
        """(probabilities, pooled features or None): told apart by width, not by order, which the
        converter does not promise."""
        probs = [d for d in details if d["shape"][-1] == len(self.labels)]
        if not probs:
            raise BundleError(
                f"{self.bundle.tflite}: no model output has {len(self.labels)} values, one per "
                f"label in the manifest (outputs: {[list(map(int, d['shape'])) for d in details]})"
            )
        rest = [d for d in details if d is not probs[0] and len(d["shape"]) == 2]
        return probs[0], (rest[0] if rest else None)

    def _check_model(self):
        """The manifest must describe this model: otherwise answers would be silently wrong."""
        where = self.bundle.tflite.with_suffix(".json")
        shape = [int(v) for v in self._in["shape"]]
        if shape[1:3] != list(self.spec.size) or shape[-1] != 3:
            raise BundleError(
                f"{where}: manifest field 'input.size' {list(self.spec.size)} does not match the model's input {shape}"
            )
        dtype = (self.bundle.manifest.get("input") or {}).get("dtype")
        if dtype and dtype != np.dtype(self._in["dtype"]).name:
            raise BundleError(
                f"{where}: manifest field 'input.dtype' {dtype} does not match the model's "
                f"{np.dtype(self._in['dtype']).name}"
            )
        if self.trust is not None:
            if self._feat is None:
                raise BundleError(f"{where}: manifest has trust statistics but the model has no feature output")
            if int(self._feat["shape"][-1]) != self.trust.feature_dim:
                raise BundleError(
                    f"{where}: trust field 'mean' has {self.trust.feature_dim} features but the "
                    f"model's feature output has {int(self._feat['shape'][-1])}"
                )

    @classmethod
    def load(cls, model=None, **kw) -> Classifier:
        return cls(load_bundle(model), **kw)

    def describe(self) -> dict:
        return {
            "model": self.bundle.name,
            "model_sha256": self.bundle.sha256,
            "quantization": self.bundle.quantization,
            **self.info,
        }

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        if self._in_q is None:
            return x.astype(np.float32)
        scale, zero = self._in_q
        info = np.iinfo(self._in["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(self._in["dtype"])

    def _read(self, detail) -> np.ndarray:
        out = self.interpreter.get_tensor(detail["index"])[0]
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32)

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, float]:
        """One float32 model input (H, W, 3) -> (raw probabilities, pooled features or None,
        invoke milliseconds). Raw: the model's, fused with the bundle's cell-feature head where it
        has one (core/cellhead.py), before calibration."""
        self.interpreter.set_tensor(self._in["index"], self.quantize_input(x[None]))
        t = time.perf_counter()
        self.interpreter.invoke()
        ms = (time.perf_counter() - t) * 1000
        probs = self._read(self._out)
        if self.head is not None:
            probs = self.head.fuse(probs, cell_features(pixels_of(x, self.spec)))[0]
        return probs, (self._read(self._feat) if self._feat is not None else None), ms

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """One float32 model input (H, W, 3) -> (raw probabilities, as `infer`; invoke milliseconds)."""
        probs, _, ms = self.infer(x)
        return probs, ms

    def colour_score(self, x: np.ndarray) -> float | None:
        """The colour statistic of one float32 model input, None when the bundle has none."""
        if self.trust is None or self.trust.colour is None:
            return None
        return self.trust.colour.score(colour_features(pixels_of(x, self.spec)))

    def predict_many(self, xs) -> dict:
        """Float32 model inputs, one at a time as on the Pi -> {"probs": calibrated (N, C),
        "raw": uncalibrated probabilities (as `infer`: with the cell-feature head where there is
        one), "features": (N, D) or None, "ood_score": (N,) or None,
        "colour_score": (N,) or None, "ood": (N,) bool or None (either score over its threshold),
        "ms": (N,)}."""
        raws: list[np.ndarray] = []
        feats: list[np.ndarray] = []  # empty when the model has no feature output
        colours: list[float] = []  # empty when the bundle has no colour statistic
        ms: list[float] = []
        for x in xs:
            p, f, t = self.infer(x)
            raws.append(p)
            if f is not None:
                feats.append(f)
            c = self.colour_score(x)
            if c is not None:
                colours.append(c)
            ms.append(t)
        raw = np.stack(raws) if raws else np.zeros((0, len(self.labels)), np.float32)
        features = np.stack(feats) if feats else None
        out = {
            "raw": raw,
            "probs": raw,
            "features": features,
            "ood_score": None,
            "colour_score": None,
            "ood": None,
            "ms": np.asarray(ms),
        }
        if self.trust is not None:
            out["probs"] = self.trust.calibrate(raw)
            if len(raw):
                assert features is not None  # trust statistics imply a feature output (_check_model)
                scores = self.trust.scores(features)
            else:
                scores = np.zeros(0)
            colour = np.asarray(colours, np.float64) if self.trust.colour is not None else None
            out.update(ood_score=scores, colour_score=colour, ood=self.trust.flags(scores, colour))
        return out

    def classify(self, source, name=None, top_k: int = 3) -> Prediction:
        """A file path, bytes or RGB uint8 array -> Prediction. Raises ImageError on bad input."""
        return self.classify_input(prepare(source, self.spec, name=name), top_k)

    def classify_input(self, x: np.ndarray, top_k: int = 3) -> Prediction:
        """An already prepared model input (see preprocess.prepare) -> Prediction; lets the capture
        loop time preprocessing apart from the interpreter."""
        probs, feats, ms = self.infer(x)
        score, colour, ood = None, self.colour_score(x), False
        if self.trust is not None:
            probs = self.trust.calibrate(probs)
            assert feats is not None  # trust statistics imply a feature output (_check_model)
            score = self.trust.score(feats)
            ood = bool(self.trust.flags(np.asarray(score), None if colour is None else np.asarray(colour)))
        i = int(np.argmax(probs))
        order = np.argsort(-probs)[:top_k]
        conf = float(probs[i])
        t = self.trust
        reason = review_reason(
            conf,
            self.review_threshold,
            score,
            t.threshold if t else None,
            colour,
            t.colour.threshold if t and t.colour else None,
        )
        return Prediction(
            label=self.labels[i],
            confidence=conf,
            probs={lab: float(p) for lab, p in zip(self.labels, probs)},
            latency_ms=ms,
            review=bool(reason),
            top=[(self.labels[j], float(probs[j])) for j in order],
            ood_score=score,
            ood=ood,
            review_reason=reason,
            colour_score=colour,
        )
