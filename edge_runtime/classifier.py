"""The runtime core, top to bottom: bundle -> interpreter -> image -> input tensor -> probabilities.

    clf = Classifier.load()                       # the bundled default int8 model
    result = clf.classify("cell.jpg")             # -> Prediction(label, confidence, probs, ...)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .bundle import Bundle, load_bundle
from .interpreter import make_interpreter
from .preprocess import prepare

DEFAULT_REVIEW_THRESHOLD = 0.80  # below this a result is flagged for a human to look at


@dataclass
class Prediction:
    label: str
    confidence: float
    probs: dict[str, float]
    latency_ms: float  # interpreter invoke only
    review: bool
    top: list[tuple[str, float]] = field(default_factory=list)


class Classifier:
    def __init__(self, bundle: Bundle, threads: int | None = None, device: str = "cpu",
                 review_threshold: float = DEFAULT_REVIEW_THRESHOLD):
        self.bundle = bundle
        self.labels = bundle.labels
        self.spec = bundle.spec
        self.review_threshold = review_threshold
        self.interpreter, self.info = make_interpreter(bundle.tflite, threads, device)
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        # Quantized tensors: real = scale * (q - zero_point).
        self._in_q = self._in["quantization"] if self._in["dtype"] != np.float32 else None
        self._out_q = self._out["quantization"] if self._out["dtype"] != np.float32 else None

    @classmethod
    def load(cls, model=None, **kw) -> "Classifier":
        return cls(load_bundle(model), **kw)

    def describe(self) -> dict:
        return {"model": self.bundle.name, "model_sha256": self.bundle.sha256,
                "quantization": self.bundle.quantization, **self.info}

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        if self._in_q is None:
            return x.astype(np.float32)
        scale, zero = self._in_q
        info = np.iinfo(self._in["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(self._in["dtype"])

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """One float32 model input (H, W, 3) -> (probabilities, invoke milliseconds)."""
        self.interpreter.set_tensor(self._in["index"], self.quantize_input(x[None]))
        t = time.perf_counter()
        self.interpreter.invoke()
        ms = (time.perf_counter() - t) * 1000
        out = self.interpreter.get_tensor(self._out["index"])[0]
        if self._out_q is not None:
            scale, zero = self._out_q
            out = (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32), ms

    def classify(self, source, name=None, top_k: int = 3) -> Prediction:
        """A file path, bytes or RGB uint8 array -> Prediction. Raises ImageError on bad input."""
        return self.classify_input(prepare(source, self.spec, name=name), top_k)

    def classify_input(self, x: np.ndarray, top_k: int = 3) -> Prediction:
        """An already prepared model input (see preprocess.prepare) -> Prediction; lets the capture
        loop time preprocessing apart from the interpreter."""
        probs, ms = self.predict(x)
        i = int(np.argmax(probs))
        order = np.argsort(-probs)[:top_k]
        conf = float(probs[i])
        return Prediction(
            label=self.labels[i], confidence=conf,
            probs={lab: float(p) for lab, p in zip(self.labels, probs)}, latency_ms=ms,
            review=conf < self.review_threshold,
            top=[(self.labels[j], float(probs[j])) for j in order])
