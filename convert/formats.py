"""The export formats: one table, one function that applies a row to a TFLite converter.

    name       suffix     weights   activations  calibration  ops           model I/O
    float32    float32    float32   float32      -            builtins      float32
    float16    float16    float16   float32      -            builtins      float32
    dynamic    dynamic    int8      float32 (*)  -            builtins      float32
    int8       int8       int8      int8         train split  int8 only     int8 (--io)
    qat-int8   qat_int8   int8      int8         learned      int8 only     int8 (--io)
    edgetpu    edgetpu    int8      int8         as int8/qat  int8 only     uint8, then edgetpu_compiler

(*) dynamic range: activations are quantized on the fly per inference where a kernel allows it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

IO_TYPES = ("float32", "int8", "uint8")


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # of the default bundle name, e.g. mobilenetv2_96_int8
    optimize: bool  # tf.lite.Optimize.DEFAULT
    float16: bool = False  # weights stored as float16
    calibration: bool = False  # needs a representative data set
    integer_only: bool = False  # TFLITE_BUILTINS_INT8: every op integer
    qat: bool = False  # quantization-aware fine-tuning before conversion
    io: str = "float32"  # default model input/output type
    compiler: str | None = None
    per_channel: bool = True  # int8 weights: one scale per output channel, else one per tensor
    summary: str = ""


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "float32", "float32", optimize=False, summary="reference: the Keras model's arithmetic, 4 bytes a weight"
        ),
        Format(
            "float16",
            "float16",
            optimize=True,
            float16=True,
            summary="half the size; weights dequantized to float32 at load, so CPU speed as float32",
        ),
        Format(
            "dynamic",
            "dynamic",
            optimize=True,
            summary="int8 weights, float activations quantized per inference; quarter size, no calibration",
        ),
        Format(
            "int8",
            "int8",
            optimize=True,
            calibration=True,
            integer_only=True,
            io="int8",
            summary="full integer: int8 weights and activations calibrated on training images; "
            "fastest on Arm CPUs, needed by the Edge TPU",
        ),
        Format(
            "qat-int8",
            "qat_int8",
            optimize=True,
            integer_only=True,
            qat=True,
            io="int8",
            summary="full integer after quantization-aware fine-tuning; recovers accuracy int8 loses",
        ),
        Format(
            "edgetpu",
            "edgetpu",
            optimize=True,
            integer_only=True,
            io="uint8",
            compiler="edgetpu_compiler",
            summary="full integer with uint8 I/O compiled for the Coral Edge TPU",
        ),
    )
}


# Views of the table; everything that lists formats (the CLI, the export summary, the
# benchmark and its report) takes them from here, so a new row reaches all of them.
ORDER: tuple[str, ...] = tuple(FORMATS)
# `convert --quantize`: the post-training rows; qat-int8 and edgetpu are reached by --qat and
# --edgetpu on top of int8.
QUANTIZE_CHOICES: tuple[str, ...] = tuple(n for n, f in FORMATS.items() if not f.qat and f.compiler is None)
# What the benchmark can run on a CPU: every row but those that need a compiler and its chip.
CPU_FORMATS: tuple[str, ...] = tuple(n for n, f in FORMATS.items() if f.compiler is None)


def arithmetic(name: str) -> str | None:
    """The arithmetic a CPU runs a format in: float32 (float16 weights are dequantized at
    load), int8 (full integer), None for dynamic range (a mix per kernel)."""
    f = FORMATS[name]
    if f.integer_only:
        return "int8"
    return "float32" if not f.optimize or f.float16 else None


def resolve(quantize: str, qat: bool = False, edgetpu: bool = False, per_tensor: bool = False) -> Format:
    """CLI choices -> the row that describes the conversion (edgetpu only adds the compile step)."""
    if qat and quantize != "int8":
        raise ValueError("--qat produces a full-integer model: use it with --quantize int8")
    if edgetpu and quantize != "int8":
        raise ValueError("the Edge TPU runs full-integer models only: use --edgetpu with --quantize int8")
    fmt = FORMATS["qat-int8" if qat else quantize]
    if per_tensor:
        if fmt.name != "int8":
            raise ValueError("--per-tensor applies to post-training int8 (QAT learns per-channel weight ranges)")
        # Per-channel scales and int64 zero points cost ~12 bytes a channel, ~15% of an int8
        # MobileNetV2; one scale a tensor saves that at some accuracy.
        fmt = replace(fmt, suffix=f"{fmt.suffix}_pt", per_channel=False)
    return fmt


def apply(converter, fmt: Format, io: str, representative=None, allow_float_ops: bool = False):
    """Set a tf.lite.TFLiteConverter's options for one format; returns the converter."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf

    if io not in IO_TYPES:
        raise ValueError(f"--io must be one of {', '.join(IO_TYPES)}")
    if io != "float32" and not fmt.integer_only:
        raise ValueError(f"{fmt.name} models take and give float32; integer I/O needs --quantize int8")
    if fmt.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt.float16:
        converter.target_spec.supported_types = [tf.float16]
    if fmt.calibration:
        if representative is None:
            raise ValueError(f"{fmt.name} needs calibration data (--calibration)")
        converter.representative_dataset = representative
    if not fmt.per_channel:
        converter._experimental_disable_per_channel = True  # noqa: SLF001 - the converter's only switch
    if fmt.integer_only and _int8_opset(fmt):
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if allow_float_ops:
            # Float kernels as a fallback; gate.float_ops() then lists what used them.
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        converter.target_spec.supported_ops = ops
    if fmt.integer_only:
        dtype = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[io]
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
    return converter


def _int8_opset(fmt: Format) -> bool:
    # A QAT graph is integer through its fake-quant nodes. Restricting it to TFLITE_BUILTINS_INT8
    # trips a pre-check of TF 2.16-2.21 that wants a representative dataset, and one would make
    # the converter calibrate over the learned ranges; gate.float_ops() checks the result instead.
    return not fmt.qat


def options(fmt: Format, io: str, allow_float_ops: bool = False) -> dict:
    """What apply() set, for the manifest."""
    return {
        "optimizations": ["DEFAULT"] if fmt.optimize else [],
        "supported_types": ["float16"] if fmt.float16 else [],
        "supported_ops": (["TFLITE_BUILTINS_INT8"] + (["TFLITE_BUILTINS"] if allow_float_ops else []))
        if fmt.integer_only and _int8_opset(fmt)
        else ["TFLITE_BUILTINS"],
        "per_channel_weights": fmt.per_channel if fmt.integer_only or fmt.name == "dynamic" else None,
        "representative_dataset": fmt.calibration,
        "quantization_aware_training": fmt.qat,
        "inference_input_type": io,
        "inference_output_type": io,
    }
