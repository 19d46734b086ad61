#!/usr/bin/env bash
# Export one trained run in every format, gate each on the validation split, record the test
# split too, summarise, and ship the best accepted int8 bundle with its float32 twin.
# Usage: scripts/export_all.sh [RUN_DIR]   (default runs/mobilenetv2_160_ft, the final model)
#   DATA=dir  data root of runs/split.csv (default ../shared/data/pbc256)
#   SHIP=dir  where the accepted bundles go (default edge_runtime/core/models; SHIP= to skip)
#   FORMATS="float32 int8 int8_pt"  a subset of: float32 float16 dynamic int8 int8_pt qat edgetpu
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/mobilenetv2_160_ft}
NAME=$(basename "$RUN")
DATA=${DATA:-../shared/data/pbc256}
OUT=${OUT:-runs/exports/$NAME}
SHIP=${SHIP-edge_runtime/core/models}
CLI=${CLI:-.venv/bin/edge-bloodcls}
[ -f "$RUN/model.keras" ] || { echo "$RUN/model.keras: not trained yet" >&2; exit 2; }

# --force: a format that fails its gate is still written and shown (as FAIL) in the summary;
# the summary never ships a bundle whose gate failed.
common=(--calibration runs/split.csv --data-root "$DATA" --cache-dir .cache/pixels --eval-test --force --out "$OUT")
want() { [[ " ${FORMATS:-float32 float16 dynamic int8 int8_pt qat edgetpu} " == *" $1 "* ]]; }
for q in float32 float16 dynamic int8; do
  if want $q; then $CLI convert "$RUN/model.keras" --quantize "$q" "${common[@]}"; fi
done
if want int8_pt; then $CLI convert "$RUN/model.keras" --quantize int8 --per-tensor "${common[@]}"; fi
if want qat; then $CLI convert "$RUN/model.keras" --quantize int8 --qat --qat-epochs "${QAT_EPOCHS:-2}" "${common[@]}"; fi
if want edgetpu; then
  if command -v edgetpu_compiler >/dev/null; then
    $CLI convert "$RUN/model.keras" --quantize int8 --edgetpu "${common[@]}"
  else
    echo "Edge TPU: skipped, edgetpu_compiler is not installed (docs/convert.md says how)"
  fi
fi
$CLI convert-summary "$OUT" --out "benchmarks/results/convert_$NAME" ${SHIP:+--ship "$SHIP"}
