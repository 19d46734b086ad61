"""Edge targets the benchmark did not run on (Raspberry Pi 4 and 5, Coral USB), estimated by
scaling published measurements of MobileNet v2 to the measured models; and the report's
section that says how."""

from __future__ import annotations

from typing import Any

from edge_bloodcls.convert.formats import CPU_FORMATS, arithmetic

from .report_common import FORMAT_ORDER, _ms, model_order, threads_for_plots
from .results import Results

# Published figures the edge estimates scale from; none of them was measured here.
# google/XNNPACK README, "Raspberry Pi" table, RPi 4 (BCM2711, ARM64), multi-threaded, Feb 2022
XNNPACK_PI4: dict[str, Any] = {
    "source": "XNNPACK README (github.com/google/XNNPACK), Raspberry Pi 4 BCM2711 ARM64, 4 threads, Feb 2022",
    "model": "MobileNet v2 1.0 224x224",
    "macs": 300e6,
    "float32": 46.0,
    "int8": 17.0,
}
PI4_INT8_SPEEDUP = XNNPACK_PI4["float32"] / XNNPACK_PI4["int8"]
PI5_SPEEDUP = (2.0, 3.0)  # Raspberry Pi Ltd, Pi 5 announcement: "2-3x the CPU performance of Pi 4"
CORAL: dict[str, Any] = {  # coral.ai/docs/edgetpu/benchmarks, Table 1, desktop CPU + USB Accelerator (USB 3.0), ms
    "source": "coral.ai/docs/edgetpu/benchmarks, Table 1 (USB Accelerator on USB 3.0)",
    "mobilenetv2_ms": 2.6,
    "mobilenetv2_macs": 300e6,  # 3.5 M parameters: on chip
    "vgg16_ms": 296.0,
    "vgg16_mb": 138.0,
}  # 138 M int8 parameters: nearly all streamed
CORAL_SRAM_MB = 8  # parameters beyond the Edge TPU's on-chip memory stream from the host each inference
# Time a streamed MB costs at most: VGG16's whole time as if it were all streaming.
CORAL_MS_PER_STREAMED_MB = CORAL["vgg16_ms"] / CORAL["vgg16_mb"]
# Formats whose arithmetic on an Arm CPU is float32 (float16 weights are dequantized at load).
# Dynamic range has no single arithmetic (and no published Pi figure), so it gets no estimate.
FLOAT_LIKE: dict[str, str] = {f: a for f in CPU_FORMATS if (a := arithmetic(f))}


def edge_estimates(r: Results) -> list[dict]:
    """Estimated Pi 4 / Pi 5 / Coral latency per model and format, from published figures for
    MobileNet v2 at 224 px (XNNPACK_PI4, CORAL). Pi 4 by two methods:
      scaled: float formats, our latency x (published Pi 4 float32 / ours for the untrained
        224 px MobileNetV2 reference, same thread setting); int8 formats, that float32 estimate
        / the published Pi 4 int8 speed-up (this CPU's int8 instructions have no Pi 4 twin);
      macs: the published time x our MACs / the reference's MACs."""
    by = r.by_key()
    ref = next((k for k, m in r.models.items() if m.get("role") == "reference"), None)
    th = "all" if any(c["threads"] == "all" for c in r.configs) else threads_for_plots(r)
    ref_f32 = by.get((ref, "float32", th)) if ref else None
    out = []
    for model in model_order(r):
        info = r.models[model]
        if info.get("role") == "reference" or not info.get("macs"):
            continue
        f32 = by.get((model, "float32", th))
        f32_scaled = (
            f32["latency_ms"]["p50"] * XNNPACK_PI4["float32"] / ref_f32["latency_ms"]["p50"]
            if f32 and ref_f32
            else None
        )
        for fmt in [f for f in FORMAT_ORDER if f in FLOAT_LIKE]:
            c = by.get((model, fmt, th))
            if not c:
                continue
            kind = FLOAT_LIKE[fmt]
            macs_ms = XNNPACK_PI4[kind] * info["macs"] / XNNPACK_PI4["macs"]
            if kind == "float32":
                scaled = (
                    c["latency_ms"]["p50"] * XNNPACK_PI4["float32"] / ref_f32["latency_ms"]["p50"] if ref_f32 else None
                )
            else:
                scaled = f32_scaled / PI4_INT8_SPEEDUP if f32_scaled else None
            both = [v for v in (scaled, macs_ms) if v is not None]
            row = {
                "model": model,
                "format": fmt,
                "here_ms": c["latency_ms"]["p50"],
                "threads": th,
                "pi4_scaled_ms": scaled,
                "pi4_macs_ms": macs_ms,
                "pi4_ms": (min(both), max(both)),
            }
            row["pi5_ms"] = (row["pi4_ms"][0] / PI5_SPEEDUP[1], row["pi4_ms"][1] / PI5_SPEEDUP[0])
            if kind == "int8":
                compute = CORAL["mobilenetv2_ms"] / CORAL["mobilenetv2_macs"] * info["macs"]
                streamed = max(0.0, c["size_bytes"] / 1e6 - CORAL_SRAM_MB)
                row["coral_ms"] = (compute, compute + streamed * CORAL_MS_PER_STREAMED_MB)
                row["int8_mb"] = c["size_bytes"] / 1e6
            out.append(row)
    return out


def _int8_hardware_note(r: Results) -> list[str]:
    fast = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in r.machine_info["cpu_flags"]]
    if not fast:
        return []
    return [
        f"- Why int8 is not scaled from this machine: its CPU has int8 dot-product/matrix instructions "
        f"({', '.join(fast)}) that XNNPACK's int8 kernels use, so int8's speed-up over float32 here (see the table "
        "above) is far larger than a Pi 4's Cortex-A72, which has none, can give: on a Pi 4 the published "
        f"MobileNet v2 speed-up is {PI4_INT8_SPEEDUP:.1f}×."
    ]


def _edge_section(r: Results) -> list[str]:
    est = edge_estimates(r)
    ref = next((m for m in r.models.values() if m.get("role") == "reference"), None)
    lines = [
        "## Edge targets (estimates, not measurements)",
        "",
        "Nothing below was run on a Raspberry Pi or a Coral. Each figure scales a published measurement of "
        f"{XNNPACK_PI4['model']} ({XNNPACK_PI4['macs'] / 1e6:.0f} M MACs) to our models. Basis for the Pi 4: "
        f"{XNNPACK_PI4['source']}: float32 {XNNPACK_PI4['float32']:.0f} ms, "
        f"int8 {XNNPACK_PI4['int8']:.0f} ms.",
        "",
        "- **Pi 4, scaled from this machine**: float formats: our p50 here × (published Pi 4 float32 time ÷ our "
        "time for an untrained MobileNetV2 at 224 px, measured here at the same thread setting). int8 formats: "
        f"that float32 estimate ÷ {PI4_INT8_SPEEDUP:.1f} (the published Pi 4 int8 speed-up)."
        + ("" if ref else " Not available: this run did not measure the 224 px reference (`bench --reference`)."),
        "- **Pi 4, by MACs**: the published time of the same arithmetic (float32 or int8) × our MACs ÷ 300 M. "
        "It assumes MobileNetV2's time per MAC; dense 3×3 convolutions (VGG, ResNet) usually run more MACs per "
        "second than depthwise ones, so for those it likely overestimates.",
        f"- **Pi 5**: the Pi 4 range of both methods ÷ {PI5_SPEEDUP[0]:.0f}–{PI5_SPEEDUP[1]:.0f} (Raspberry Pi "
        "Ltd's stated CPU speed-up of Pi 5 over Pi 4; Cortex-A76 at 2.4 GHz vs A72 at 1.5–1.8 GHz; the A76 "
        "also has int8 dot-product instructions, so int8 may gain more than that).",
        f"- **Coral USB (Edge TPU)**, int8 only, from {CORAL['source']}: compute at MobileNet v2's published "
        f"rate ({CORAL['mobilenetv2_ms']} ms for 300 M MACs, its weights on chip); for a model whose int8 file "
        f"exceeds the Edge TPU's ~{CORAL_SRAM_MB} MB of on-chip memory, the upper end adds the excess streamed "
        f"from the host on every inference at up to {CORAL_MS_PER_STREAMED_MB:.1f} ms/MB (VGG16 224: "
        f"{CORAL['vgg16_ms']:.0f} ms for ~{CORAL['vgg16_mb']:.0f} MB of weights, all counted as streaming). Dense "
        "convolutions likely use the systolic array better than MobileNet's depthwise ones, so the compute "
        "part may be lower still. Ops the compiler cannot map would run on the host CPU; the Edge TPU compiler "
        "was not run here.",
        *_int8_hardware_note(r),
        "",
        "| model | format | here p50 (ms, threads) | Pi 4 scaled (ms) | Pi 4 by MACs (ms) | Pi 5 (ms) | "
        "Coral USB (ms) | int8 file vs 8 MB |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for e in est:
        coral = (
            ""
            if "coral_ms" not in e
            else _ms(e["coral_ms"][0])
            if e["coral_ms"][0] == e["coral_ms"][1]
            else f"{_ms(e['coral_ms'][0])}–{_ms(e['coral_ms'][1])}"
        )
        fits = (
            ""
            if "int8_mb" not in e
            else ("fits" if e["int8_mb"] <= CORAL_SRAM_MB else f"{e['int8_mb']:.1f} MB: streams")
        )
        lines.append(
            f"| {e['model']} | {e['format']} | {_ms(e['here_ms'])} ({e['threads']}) | "
            f"{_ms(e['pi4_scaled_ms'])} | {_ms(e['pi4_macs_ms'])} | "
            f"{_ms(e['pi5_ms'][0])}–{_ms(e['pi5_ms'][1])} | {coral} | {fits} |"
        )
    if not est:
        lines.append("| (no model with a MAC count and a float32/int8 measurement) | | | | | | | |")
    return lines
