#!/usr/bin/env bash
# The full benchmark: MobileNetV2 and the three baselines in every format, at 1 thread and at all
# cores, on the test split, plus the 224 px reference the report's edge estimates scale from.
# Resumable: each configuration is saved as it finishes and a rerun measures only what is missing,
# so it can run in pieces (e.g. MobileNetV2 now, the baselines when their training is done).
# Usage: scripts/bench_all.sh [OUT]   (default benchmarks/results)
#   DATA=dir         data root of runs/split.csv (default ../shared/data/pbc256)
#   MAX_IMAGES=n     accuracy on a stratified subset of the 1538 test images (default: all)
#   RUNS=n WARMUP=n  timed / untimed inferences per configuration (default 200 / 20)
#   MODELS=...       default "mobilenetv2 runs/mobilenetv2_160_ft resnet50 vgg16 vgg19"; each
#                    ARCH is runs/ARCH_96 (an untrained build, latency and size only, while it
#                    has no model.keras); a runs/... directory is that run
#   REDO=1           measure again what bench.json holds (e.g. a baseline once it is trained)
#   RUNS64=dir       where the 64 px protocol's runs are (default ~/.cache/edge-bloodcls/runs)
#   PARETO_ONLY=1    only the speed search (PARETO.md), not the full benchmark
#   REDO_LATENCY=1   time again what bench.json holds, keeping its accuracy (e.g. once the
#                    machine is idle: latency measured beside a training job is pessimistic)
# Run it on an otherwise idle machine: latency under other load is recorded (load average per
# configuration) but is not the model's.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
DATA=${DATA:-../shared/data/pbc256}
CLI=${CLI:-.venv/bin/edge-bloodcls}
common=(--data runs/split.csv --data-root "$DATA" --runs "${RUNS:-200}" --warmup "${WARMUP:-20}" --out "$OUT" --no-report)
[ -n "${MAX_IMAGES:-}" ] && common+=(--max-images "$MAX_IMAGES")
[ -n "${REDO_LATENCY:-}" ] && common+=(--redo-latency)
[ -n "${REDO:-}" ] && common+=(--redo)

# PARETO_ONLY=1: only the speed search below.
[ -n "${PARETO_ONLY:-}" ] && MODELS=none
for m in ${MODELS:-mobilenetv2 runs/mobilenetv2_160_ft resnet50 vgg16 vgg19}; do
  [ "$m" = none ] && continue
  if [[ "$m" == runs/* ]]; then
    # A later stage of MobileNetV2 (the shipped default's source): the float and int8 exports.
    $CLI bench --models "$m" --formats keras,float32,int8 "${common[@]}"
  elif [ "$m" = mobilenetv2 ]; then
    # The exports of scripts/export_all.sh (QAT included) are used when present.
    $CLI bench --models "$m" --formats keras,float32,float16,dynamic,int8,qat-int8 "${common[@]}"
  else
    # QAT here would be a CPU training epoch of a large network per model: not for the baselines.
    $CLI bench --models "$m" --formats keras,float32,float16,dynamic,int8 --qat-epochs 0 --no-shipped "${common[@]}"
  fi
done
# The 64 px protocol's runs (issue 30; scripts/train_all.sh section 9), from the training cache
# (their model.keras files are too large to commit), each once its training has ended.
RUNS64=${RUNS64:-$HOME/.cache/edge-bloodcls/runs}
if [ -z "${PARETO_ONLY:-}" ]; then
  for a in resnet50 vgg16_bn vgg19_bn mobilenetv2; do
    [ -f "$RUNS64/${a}_64/metrics.json" ] || continue
    $CLI bench --models "$a" --size 64 --runs-dir "$RUNS64" --formats keras,int8 --qat-epochs 0 --no-shipped \
      "${common[@]}"
  done
fi
if [ -z "${PARETO_ONLY:-}" ]; then
  $CLI bench --models mobilenetv2@224 --formats float32,int8 "${common[@]}"
  $CLI bench-report "$OUT/bench.json"
fi

# The speed search (issue 13): the float32 and int8 exports of every candidate and the
# MobileNetV2-1.0 @224 reference, at 1 thread, in ONE fresh run (a new bench.json) so that the
# speed-ups compare timings taken minutes apart under the same load. Run it on an idle machine.
# PARETO=0 skips it; CANDIDATES overrides the list.
if [ "${PARETO:-1}" != 0 ]; then
  P=$OUT/pareto
  models=${CANDIDATES:-runs/student_a035_96,runs/student_a035_96_c2,runs/student_a035_112,runs/student_a050_96,runs/mobilenetv2_96,runs/mobilenetv2_128_ft,runs/mobilenetv2_160_ft,runs/student_a100_160}
  keep=$(for m in ${models//,/ }; do [ -f "$m/model.keras" ] && printf '%s,' "$m"; done)
  # The shipped int8 bundles themselves, as the runtime loads them (per-tensor where shipped so).
  keep+=$(ls edge_runtime/core/models/*_int8.json | tr '\n' ',')
  # A fresh file (so nothing is kept to --redo): rows of models no longer listed (a bundle since
  # replaced) must not survive from an older run, timed on another day or machine.
  rm -f "$P/bench.json"
  $CLI bench --models "${keep}mobilenetv2@224" --formats float32,int8 --threads 1 --no-shipped \
    --data runs/split.csv --data-root "$DATA" --runs "${RUNS:-200}" --warmup "${WARMUP:-20}" --out "$P" --no-report
  $CLI bench-report "$P/bench.json" --pareto
fi
