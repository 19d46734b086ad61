#!/usr/bin/env bash
# The 32-bit route of docs/raspberry-pi.md, once: armhf Debian Bookworm under qemu-arm (Cortex-A7,
# as a Raspberry Pi 2; `uname -m` armv7l), NumPy, Pillow, click, OpenCV and scikit-learn from apt,
# tflite-runtime and the package from pip, into a `--system-site-packages` venv; classify, evaluate
# and capture, compared with the native run of the same inputs. Not part of `make pi-check`; run it
# after it (it uses its native venv in PI_CACHE). Log: benchmarks/results/pi_check_bookworm_armhf.log.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PI_CACHE:-/var/cache/edge-bloodcls}
DATA=${PI_DATA:-$REPO/../shared/data}
MIRROR=${PI_MIRROR:-http://deb.debian.org/debian}
LOG=${PI_LOG_DIR:-$REPO/benchmarks/results}/pi_check_bookworm_armhf.log
CPU=cortex-a7
R=$CACHE/rootfs-bookworm-armhf
NVENV=$CACHE/native-venv
APT_PKGS="python3-numpy python3-pil python3-click python3-opencv python3-sklearn"

[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 2; }
[ -x "$NVENV/bin/edge-bloodcls" ] || { echo "run make pi-check first (no native venv at $NVENV)" >&2; exit 2; }
W=$(mktemp -d /tmp/pi_armhf.XXXXXX)
was_enabled=0
if grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-arm 2>/dev/null; then was_enabled=1; else update-binfmts --enable qemu-arm; fi
cleanup() {
    for m in "$R/proc/cpuinfo" "$R/proc" "$R/sys"; do if mountpoint -q "$m" 2>/dev/null; then umount "$m" || umount -l "$m"; fi; done
    if [ $was_enabled = 0 ]; then update-binfmts --disable qemu-arm || true; fi
}
trap cleanup EXIT
say() { printf '%s\n' "$*" | tee -a "$W/head.log"; }

if [ ! -f "$R/etc/edge-bloodcls-rootfs" ]; then
    rm -rf --one-file-system "$R.partial"
    nice -n 19 debootstrap --arch=armhf --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$R.partial" "$MIRROR" >"$W/debootstrap.log" 2>&1
    printf 'debootstrap --arch=armhf --variant=minbase bookworm\ncreated %s\n' "$(date -u +%FT%TZ)" >"$R.partial/etc/edge-bloodcls-rootfs"
    mv "$R.partial" "$R"
fi
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
cp --remove-destination /etc/resolv.conf "$R/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/host-ca-certificates.crt"
G() {
    timeout 3600 chroot "$R" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        QEMU_CPU=$CPU PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        ${EXTRA:-} /bin/bash -c "$*"
}
if [ ! -f "$R/etc/edge-bloodcls-apt" ]; then
    G "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $APT_PKGS && apt-get clean && touch /etc/edge-bloodcls-apt" >"$W/apt.log" 2>&1
fi
# The /proc/cpuinfo of a Pi 2 (qemu-user shows the host's x86 one); one entry per possible CPU.
n=$(($(tr ',-' '\n\n' </sys/devices/system/cpu/possible | tail -n 1) + 1))
for ((i = 0; i < n; i++)); do
    printf 'processor\t: %d\nmodel name\t: ARMv7 Processor rev 5 (v7l)\nBogoMIPS\t: 38.40\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm\nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xc07\nCPU revision\t: 5\n\n' "$i"
done >"$W/cpuinfo"
printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 2 Model B (emulated: qemu-user QEMU_CPU=%s)\n' "$CPU" >>"$W/cpuinfo"
mount --bind "$W/cpuinfo" "$R/proc/cpuinfo"

# The wheel from a copy of the working tree; the inputs of make pi-check.
mkdir -p "$W/src"
(cd "$REPO" && git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
    case $f in runs/* | data/*) continue ;; esac
    if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done | tar --null -T - -cf -) | tar -xf - -C "$W/src"
"$NVENV/bin/pip" wheel -q --no-deps -w "$W/dist" "$W/src" >/dev/null
WHL=$(ls "$W"/dist/*.whl)
python3 "$REPO/scripts/pi_compare.py" inputs "$W/inputs" --data "$DATA" >"$W/inputs.txt"
cp "$REPO/scripts/pi_probe.py" "$W/inputs/"
rm -rf "$R/tmp/pi_check" && mkdir -p "$R/tmp/pi_check/out" && cp -r "$W/inputs" "$WHL" "$R/tmp/pi_check/"
GW=/tmp/pi_check/$(basename "$WHL")

: >"$W/head.log"
say "pi_check_armhf: the 32-bit tflite-runtime route on armhf Debian Bookworm under qemu-arm vs natively"
say "started $(date -u +%FT%TZ); $(qemu-arm-static --version | head -n 1); repository $(git -C "$REPO" rev-parse --short HEAD)"
say "Emulated timings below are qemu-user on an x86-64 host: they are NOT Raspberry Pi timings."
say "$(cat "$W/inputs.txt")"
say "guest: uname -m $(G 'uname -m'), $(G 'python3 -V'), $(G '. /etc/os-release; echo $PRETTY_NAME') ($(cat "$R/etc/debian_version"))"
say "apt: $APT_PKGS"
V=/opt/edge-bloodcls/venv-armhf
say "pip (--only-binary=:all:, so nothing is built): $V/bin/pip install $(basename "$WHL") tflite-runtime \"numpy<2\""
G "rm -rf $V && python3 -m venv --system-site-packages $V && $V/bin/pip install --only-binary=:all: '$GW' tflite-runtime 'numpy<2' && $V/bin/pip freeze --all" >"$W/pip.log" 2>&1 \
    || { say "pip install FAILED:"; tail -n 20 "$W/pip.log" | tee -a "$W/head.log"; cat "$W/head.log" >"$LOG"; exit 1; }
say "  $(grep -E '^Successfully installed' "$W/pip.log")"
say "  environment: $(grep -iE '^(tflite-runtime|numpy|pillow|click|scikit-learn|scipy)==' "$W/pip.log" | tr '\n' ' ')"

run() {  # RUNNER OUT VENV WORKDIR
    local r=$1 out=$2 v=$3 wd=$4 cmd
    $r "mkdir -p $out"
    for cmd in "$v/bin/python pi_probe.py info > $out/info.json" \
               "$v/bin/edge-bloodcls classify cells --format jsonl --top-k 8 > $out/classify.jsonl" \
               "$v/bin/edge-bloodcls evaluate evalset --json $out/evaluate.json" \
               "$v/bin/edge-bloodcls capture --camera fields --mode field --no-preview --max-frames 6 --db $out/capture.sqlite --summary-json $out/capture_summary.json" \
               "$v/bin/python pi_probe.py session $out/capture.sqlite > $out/capture_cells.json"; do
        $r "cd $wd && $cmd" >>"$W/commands.log" 2>&1 || say "  FAILED: $cmd"
    done
}
N() { bash -c "$*"; }
EXTRA=EDGE_BLOODCLS_INTERPRETER=tflite_runtime run G /tmp/pi_check/out/armhf "$V" /tmp/pi_check/inputs
cp -r "$R/tmp/pi_check/out/armhf" "$W/armhf"
run N "$W/native" "$NVENV" "$W/inputs"
say ""
set +e
python3 "$REPO/scripts/pi_compare.py" compare --native "$W/native" --emulated "armhf-tflite-runtime=$W/armhf" \
    --manifest "$REPO/edge_runtime/core/models/$(sed -n 's/^DEFAULT_MODEL = "\(.*\)"/\1/p' "$REPO/edge_runtime/core/bundle.py").json" --log "$W/compare.log" >/dev/null
set -e
cat "$W/head.log" "$W/compare.log" >"$LOG"
grep '^RESULT' "$LOG"
echo "log: $LOG"
rm -rf "$W"
