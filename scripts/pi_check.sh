#!/usr/bin/env bash
# `make pi-check`: the edge runtime installed and run on arm64 Debian under qemu-user emulation, and
# compared with the same commands run natively. A Raspberry Pi proof without a Pi; see
# docs/raspberry-pi.md for what it shows and what it cannot.
#
#  1. Tools: debootstrap, qemu-user-static, binfmt-support (installed with apt when missing);
#     qemu-aarch64 registered with binfmt_misc.
#  2. Once, cached outside the repository: an arm64 Debian root file system per release
#     (Bookworm: Python 3.11, as Raspberry Pi OS Bookworm; Trixie: Python 3.13) made with
#     `debootstrap --arch=arm64`; for the NumPy-1 routes Debian's python3-opencv is added to it.
#  3. A wheel built from the working tree (tracked and untracked, not ignored, files), installed with
#     [edge] into a fresh virtual environment inside each root file system, and into a fresh native
#     one. Neither may bring TensorFlow.
#  4. The bundled default model (or PI_MODEL) on the same inputs on both sides: classify (jsonl),
#     evaluate (JSON) on a class-folder set, capture --mode field --no-preview --max-frames N on a
#     folder of fields, the SQLite log read back.
#  5. The runtime tests (pytest -k runtime, PI_TESTS=0 to skip) inside, on the installed wheel.
#  6. scripts/pi_compare.py: identical labels and boxes, probabilities within one output
#     quantization step, versions of both sides. Log: benchmarks/results/pi_check_<release>.log.
#
# Needs root (debootstrap, chroot, mounts), the network (Debian mirror, PyPI) and a few GB in
# PI_CACHE. Emulated steps take minutes. Settings (environment):
#   PI_RELEASES     releases to try            (bookworm trixie)
#   PI_REQUIRED     releases that must pass    (bookworm); the others are reported, not required
#   PI_CACHE        root file systems, native venv, pip caches (/var/cache/edge-bloodcls)
#   PI_QEMU_CPUS    emulated CPU models        (cortex-a72 cortex-a76: Raspberry Pi 4 and 5 cores)
#   PI_MODEL        a bundle NAME.tflite to check instead of the bundled default
#   PI_DATA         data root with pbc256/ and bccd/JPEGImages (../shared/data; synthetic if absent)
#   PI_ROUTES       extra install routes       (sys-litert tflite-runtime; "" for none)
#   PI_LOG_DIR      where the logs go          (benchmarks/results)
#   PI_MIRROR       Debian mirror              (http://deb.debian.org/debian)
#   PI_MAX_FRAMES   capture frame limit        (6, of 8 fields)
#   PI_CA_BUNDLE    CA bundle pip uses inside (/etc/ssl/certs/ca-certificates.crt: the host's trust)
#   PI_KEEP=1       keep the work directory
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RELEASES=${PI_RELEASES-bookworm trixie}
REQUIRED=${PI_REQUIRED-bookworm}
CACHE=${PI_CACHE:-/var/cache/edge-bloodcls}
QEMU_CPUS=${PI_QEMU_CPUS:-cortex-a72 cortex-a76}
MODEL=${PI_MODEL:-}
DATA=${PI_DATA:-$REPO/../shared/data}
ROUTES=${PI_ROUTES-sys-litert tflite-runtime}
LOG_DIR=${PI_LOG_DIR:-$REPO/benchmarks/results}
MIRROR=${PI_MIRROR:-http://deb.debian.org/debian}
MAX_FRAMES=${PI_MAX_FRAMES:-6}
NATIVE_PY=${PI_NATIVE_PYTHON:-python3}
STEP_TIMEOUT=${PI_STEP_TIMEOUT:-3600}
DEFAULT_MODEL=$(sed -n 's/^DEFAULT_MODEL = "\(.*\)"/\1/p' "$REPO/edge_runtime/core/bundle.py")
GUEST=/tmp/pi_check            # the work directory inside each root file system
GUEST_VENV=/opt/edge-bloodcls   # virtual environments inside each root file system

die() { echo "pi-check: $*" >&2; exit 2; }
HOST_CA=${PI_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts): sudo -E make pi-check"
command -v "$NATIVE_PY" >/dev/null || die "no $NATIVE_PY for the native side (PI_NATIVE_PYTHON)"
[ -f "$HOST_CA" ] || die "no CA bundle at $HOST_CA for pip inside the root file systems (PI_CA_BUNDLE)"

mkdir -p "$CACHE" "$LOG_DIR"
exec 9>"$CACHE/.pi-check.lock"
flock -n 9 || die "another pi-check is running (lock $CACHE/.pi-check.lock)"

WORK=$(mktemp -d /tmp/pi_check.XXXXXX)
STARTED=$(date -u +%FT%TZ)
MOUNTS=()

cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null || true
    done
    MOUNTS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# note FILE TEXT: to the terminal and to a log part.
note() { local f=$1; shift; printf '%s\n' "$*" | tee -a "$f"; }
COMMON=$WORK/common.log

# step LOGPART NAME COMMAND...: run, output to $WORK/steps/NAME.out, one line with the wall time.
step() {
    local part=$1 name=$2; shift 2
    local out=$WORK/steps/$name.out t0 rc
    mkdir -p "$WORK/steps"
    t0=$(date +%s.%N)
    printf '  %-44s ' "$name" | tee -a "$part"
    set +e
    "$@" >"$out" 2>&1
    rc=$?
    set -e
    local dt
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
    if [ $rc = 0 ]; then
        printf 'ok (%s s wall)\n' "$dt" | tee -a "$part"
    else
        printf 'FAILED (exit %s after %s s); last lines:\n' "$rc" "$dt" | tee -a "$part"
        tail -n 25 "$out" | sed 's/^/      | /' | tee -a "$part"
    fi
    return $rc
}

# ------------------------------------------------------------------ tools and binfmt
ensure_tools() {
    local need=()
    command -v debootstrap >/dev/null || need+=(debootstrap)
    [ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
    if ((${#need[@]})); then
        echo "installing ${need[*]} (apt)"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
        update-binfmts --enable qemu-aarch64
    fi
    grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 is not registered with binfmt_misc"
}

# ------------------------------------------------------------------ root file systems
mounted_under() { awk -v p="$1" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/mounts; }

remove_root() {  # never rm -rf a tree with /proc or /sys still mounted inside
    local d=$1 m
    for m in $(mounted_under "$d" | sort -r); do umount "$m" || umount -l "$m"; done
    [ -z "$(mounted_under "$d")" ] || die "$d still has mounts; not removing it"
    rm -rf --one-file-system "$d"
}

rootfs_of() { echo "$CACHE/rootfs-$1-arm64"; }

ensure_rootfs() {
    local rel=$1 part=$2 root
    root=$(rootfs_of "$rel")
    if [ -f "$root/etc/edge-bloodcls-rootfs" ]; then
        note "$part" "  root file system: $root (cached, $(head -n 2 "$root/etc/edge-bloodcls-rootfs" | tail -n 1))"
        return 0
    fi
    if [ -e "$root" ]; then remove_root "$root"; fi
    if [ -e "$root.partial" ]; then remove_root "$root.partial"; fi
    local cmd=(debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates
               "$rel" "$root.partial" "$MIRROR")
    step "$part" "debootstrap-$rel" nice -n 19 "${cmd[@]}" || return 1
    printf '%s\ncreated %s\n' "${cmd[*]}" "$(date -u +%FT%TZ)" >"$root.partial/etc/edge-bloodcls-rootfs"
    mv "$root.partial" "$root"
    note "$part" "  root file system: $root (built now)"
}

mount_root() {
    local root=$1 fs
    for fs in proc sys; do
        if ! mountpoint -q "$root/$fs"; then
            mount -t "${fs/sys/sysfs}" "$fs" "$root/$fs"
            MOUNTS+=("$root/$fs")
        fi
    done
    cp --remove-destination /etc/resolv.conf "$root/etc/resolv.conf"
    # pip inside trusts what the host trusts (a TLS-intercepting proxy's CA, if any): PIP_CERT.
    cp "$HOST_CA" "$root/etc/ssl/certs/host-ca-certificates.crt"
    # A binfmt entry without the F flag needs the emulator inside the root.
    if ! grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
        cp /usr/bin/qemu-aarch64-static "$root/usr/bin/"
    fi
}

# qemu-user 7.2 shows the x86 host's /proc/cpuinfo to arm64 programs. The cpuinfo library in the
# interpreter then finds no ARM processor: with /sys mounted it crashes (SIGSEGV in the Interpreter
# constructor), without /sys or /proc it fails its probe ("Error in cpuinfo: …") and LiteRT runs
# without its XNNPACK delegate, unlike a Pi. So each emulated run sees a /proc/cpuinfo of the
# Raspberry Pi whose core QEMU_CPU emulates, one entry per host core (as /sys lists them).
cpuinfo_for() {  # QEMU_CPU -> file
    local cpu=$1 f=$WORK/cpuinfo-$1 part variant rev features model i
    case $cpu in
        cortex-a72) part=0xd08 variant=0x0 rev=3 model="Raspberry Pi 4 Model B"
                    features="fp asimd evtstrm crc32 cpuid" ;;
        cortex-a76) part=0xd0b variant=0x4 rev=1 model="Raspberry Pi 5 Model B"
                    features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
        cortex-a53) part=0xd03 variant=0x0 rev=4 model="Raspberry Pi 3 Model B / Zero 2 W"
                    features="fp asimd evtstrm crc32 cpuid" ;;
        *) die "no Raspberry Pi /proc/cpuinfo for QEMU_CPU=$cpu (cortex-a53, cortex-a72, cortex-a76)" ;;
    esac
    : >"$f"
    local n  # one entry per possible CPU, as /sys/devices/system/cpu/possible lists them
    n=$(($(tr ',-' '\n\n' </sys/devices/system/cpu/possible | tail -n 1) + 1))
    for ((i = 0; i < n; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
            "$i" "$features" "$variant" "$part" "$rev" >>"$f"
    done
    printf 'Model\t\t: %s (emulated: qemu-user QEMU_CPU=%s)\n' "$model" "$cpu" >>"$f"
    echo "$f"
}

bind_cpuinfo() {  # ROOT QEMU_CPU
    local f
    f=$(cpuinfo_for "$2")
    unbind_cpuinfo "$1"
    mount --bind "$f" "$1/proc/cpuinfo"
    MOUNTS+=("$1/proc/cpuinfo")
}

unbind_cpuinfo() {
    while awk -v p="$1/proc/cpuinfo" '$2 == p { f = 1 } END { exit !f }' /proc/mounts; do umount "$1/proc/cpuinfo"; done
}

# guest ROOT QEMU_CPU COMMAND: a clean environment inside the root; QEMU_CPU picks the emulated core.
guest() {
    local root=$1 cpu=$2; shift 2
    timeout "$STEP_TIMEOUT" chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off \
        PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt \
        ${cpu:+QEMU_CPU=$cpu} ${GUEST_ENV:-} /bin/bash -c "$*"
}

ensure_apt_opencv() {  # Debian's OpenCV (NumPy 1.24 on Bookworm) for the --system-site-packages routes
    local root=$1 part=$2
    [ -f "$root/etc/edge-bloodcls-apt-opencv" ] && return 0
    step "$part" "apt-install-python3-opencv" guest "$root" "" \
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-opencv && apt-get clean && touch /etc/edge-bloodcls-apt-opencv"
}

# ------------------------------------------------------------------ the commands, on either side
# run_commands PART NAME PY_PREFIX WORKDIR OUTDIR RUNNER...: RUNNER gets one shell command string.
# Inputs are addressed relative to WORKDIR so that both sides report the same paths.
run_commands() {
    local part=$1 name=$2 venv=$3 wd=$4 out=$5; shift 5
    local cli="$venv/bin/edge-bloodcls" py="$venv/bin/python"
    local m=${MODEL_ARG:+--model $MODEL_ARG}
    local ok=0
    "$@" "mkdir -p $out" >/dev/null
    step "$part" "$name-info" "$@" "cd $wd && $py pi_probe.py info $m > $out/info.json" || ok=1
    step "$part" "$name-models" "$@" "cd $wd && $cli models --json > $out/models.json" || ok=1
    step "$part" "$name-classify" "$@" "cd $wd && $cli classify cells $m --format jsonl --top-k 8 > $out/classify.jsonl" || ok=1
    step "$part" "$name-evaluate" "$@" "cd $wd && $cli evaluate evalset $m --json $out/evaluate.json" || ok=1
    step "$part" "$name-capture" "$@" "cd $wd && rm -f $out/capture.sqlite* && $cli capture --camera fields $m --mode field --no-preview --max-frames $MAX_FRAMES --db $out/capture.sqlite --summary-json $out/capture_summary.json" || ok=1
    step "$part" "$name-read-log" "$@" "cd $wd && $py pi_probe.py session $out/capture.sqlite > $out/capture_cells.json" || ok=1
    return $ok
}

native_sh() { timeout "$STEP_TIMEOUT" env ${GUEST_ENV:-} bash -c "$*"; }

# ------------------------------------------------------------------ start
ensure_tools
GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
GIT_DIRTY=$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | wc -l || echo 0)
# What goes into the wheel: the runtime, the CLI, the bundled models, the packaging.
PKG_DIRTY=$(git -C "$REPO" status --porcelain -- edge_runtime app pyproject.toml 2>/dev/null | wc -l || echo 0)
{
    echo "make pi-check: the edge runtime on arm64 Debian under qemu-user emulation vs natively"
    echo "started $STARTED; host $(uname -m) $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r), $(nproc) cores"
    echo "repository $GIT_REV$([ "$GIT_DIRTY" != 0 ] && echo " + $GIT_DIRTY modified tracked file(s)"); edge_runtime/, app/, pyproject.toml: $([ "$PKG_DIRTY" = 0 ] && echo "as committed" || echo "$PKG_DIRTY uncommitted change(s)")"
    echo "$(qemu-aarch64-static --version | head -n 1); $(debootstrap --version 2>/dev/null || dpkg-query -W -f='debootstrap ${Version}' debootstrap)"
    echo "binfmt qemu-aarch64: $(tr '\n' ' ' </proc/sys/fs/binfmt_misc/qemu-aarch64 | cut -c1-120)"
    echo "Emulated timings below are qemu-user on an x86-64 host: they are NOT Raspberry Pi timings."
    echo
} | tee "$COMMON"

# The model under test.
if [ -n "$MODEL" ]; then
    MODEL_TFLITE=$(readlink -f "${MODEL%.json}"); MODEL_TFLITE=${MODEL_TFLITE%.tflite}.tflite
    [ -f "$MODEL_TFLITE" ] && [ -f "${MODEL_TFLITE%.tflite}.json" ] || die "PI_MODEL: no bundle at $MODEL_TFLITE (+ .json)"
    MODEL_JSON=${MODEL_TFLITE%.tflite}.json
    MODEL_ARG=model/$(basename "$MODEL_TFLITE")
    note "$COMMON" "model: $MODEL_TFLITE (PI_MODEL; passed as --model), sha256 $(sha256sum "$MODEL_TFLITE" | cut -c1-16)…"
else
    MODEL_JSON=$REPO/edge_runtime/core/models/$DEFAULT_MODEL.json
    [ -f "$MODEL_JSON" ] && [ -f "${MODEL_JSON%.json}.tflite" ] \
        || die "the bundled default model edge_runtime/core/models/$DEFAULT_MODEL.{tflite,json} is not there; export it first, or set PI_MODEL=PATH/NAME.tflite"
    MODEL_ARG=
    note "$COMMON" "model: bundled default $DEFAULT_MODEL (installed from the wheel, no --model), sha256 $(sha256sum "${MODEL_JSON%.json}.tflite" | cut -c1-16)…"
fi

# The wheel, from a copy of the working tree (the tree itself gets no build/ or egg-info).
note "$COMMON" "native:"
NVENV=$CACHE/native-venv
[ -e "$NVENV" ] && rm -rf "$NVENV"
step "$COMMON" "native-venv" "$NATIVE_PY" -m venv "$NVENV"
mkdir -p "$WORK/src" "$WORK/dist"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    # Tracked and untracked files that git does not ignore, less training runs and data.
    (cd "$REPO" && git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
        case $f in runs/* | data/*) continue ;; esac
        if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
else
    tar -C "$REPO" --exclude=./.venv --exclude=./runs --exclude=./data --exclude=./build --exclude='*.egg-info' \
        --exclude=./.git -cf - . | tar -xf - -C "$WORK/src"
fi
step "$COMMON" "build-wheel" "$NVENV/bin/pip" wheel --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL=$(ls "$WORK"/dist/edge_bloodcls-*.whl)
note "$COMMON" "  wheel $(basename "$WHEEL"), sha256 $(sha256sum "$WHEEL" | cut -c1-16)…, $(du -k "$WHEEL" | cut -f1) KiB"
if [ -z "$MODEL" ]; then
    "$NATIVE_PY" -m zipfile -l "$WHEEL" | grep "edge_runtime/core/models/$DEFAULT_MODEL.tflite" >/dev/null \
        || die "the wheel does not contain edge_runtime/core/models/$DEFAULT_MODEL.tflite"
fi

# Inputs, a fixed selection copied into the work directory (never into the repository).
INPUTS=$WORK/inputs
"$NATIVE_PY" "$REPO/scripts/pi_compare.py" inputs "$INPUTS" --data "$DATA" | tee -a "$COMMON"
cp "$REPO/scripts/pi_probe.py" "$INPUTS/"
if [ -n "$MODEL" ]; then
    mkdir -p "$INPUTS/model" && cp "$MODEL_TFLITE" "$MODEL_JSON" "$INPUTS/model/"
fi

declare -A STATUS=()
FREEZE_PIN=

# ------------------------------------------------------------------ emulated, per release
for rel in $RELEASES; do
    part=$WORK/$rel.log
    : >"$part"
    note "$part" ""
    note "$part" "emulated arm64 Debian $rel:"
    STATUS[$rel]=FAIL
    ensure_rootfs "$rel" "$part" || { note "$part" "  $rel: the root file system could not be built"; continue; }
    root=$(rootfs_of "$rel")
    mount_root "$root"
    rm -rf "$root$GUEST" && mkdir -p "$root$GUEST/out"
    cp -r "$INPUTS" "$root$GUEST/inputs"
    cp "$WHEEL" "$root$GUEST/"
    GW=$GUEST/$(basename "$WHEEL")
    PYV=$(guest "$root" "" "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
    note "$part" "  system Python $PYV; $(guest "$root" "" ". /etc/os-release; echo \$PRETTY_NAME") ($(cat "$root/etc/debian_version"))"

    ok=1
    # The edge install: a plain venv, the wheel with [edge].
    V=$GUEST_VENV/venv-edge
    if step "$part" "$rel-venv-edge" guest "$root" "" "rm -rf $V && python3 -m venv $V && $V/bin/pip install '$GW[edge]' && $V/bin/pip freeze --all > $GUEST/out/freeze-edge.txt"; then
        cp "$root$GUEST/out/freeze-edge.txt" "$WORK/freeze-$rel-edge.txt"
        note "$part" "    pip resolved: $(grep -iE '^(ai-edge-litert|numpy|opencv-python-headless|pillow|scikit-learn|click)==' "$WORK/freeze-$rel-edge.txt" | tr '\n' ' ')"
        if grep -qiE '^(tensorflow|tf-|tf_)' "$WORK/freeze-$rel-edge.txt"; then
            note "$part" "    TensorFlow arrived with the edge install: $(grep -iE '^(tensorflow|tf-|tf_)' "$WORK/freeze-$rel-edge.txt" | tr '\n' ' ')"
            ok=0
        else
            note "$part" "    no TensorFlow in the venv (pip freeze)"
        fi
        [ -z "$FREEZE_PIN" ] && FREEZE_PIN=$WORK/freeze-$rel-edge.txt
        # The runtime tests (`pytest -k runtime`: no TensorFlow; the committed tiny bundles, the
        # shipped bundles as the wheel installed them, the demo images) on the first emulated core.
        if [ "${PI_TESTS:-1}" != 0 ]; then
            tcpu=${QEMU_CPUS%% *}
            # Tests read scripts/ (the fuzzer, pi_compare) and demo/ beside tests/, as in a checkout.
            rm -rf "$root$GUEST/tests" "$root$GUEST/demo" "$root$GUEST/scripts"
            cp -r "$REPO/tests" "$REPO/demo" "$REPO/scripts" "$root$GUEST/"
            find "$root$GUEST/tests" "$root$GUEST/scripts" -name __pycache__ -prune -exec rm -rf {} +
            bind_cpuinfo "$root" "$tcpu"
            step "$part" "$rel-$tcpu-runtime-tests" guest "$root" "$tcpu" \
                "$V/bin/pip install -q pytest && cd $GUEST && $V/bin/python -m pytest tests -k runtime -q -p no:cacheprovider" || ok=0
            unbind_cpuinfo "$root"
            grep -E '[0-9]+ passed' "$WORK/steps/$rel-$tcpu-runtime-tests.out" | tail -n 1 | sed 's/^/    /' | tee -a "$part" || true
        fi
        for cpu in $QEMU_CPUS; do
            bind_cpuinfo "$root" "$cpu"
            note "$part" "  QEMU_CPU=$cpu; /proc/cpuinfo inside: $(grep -m1 '^Model' "$WORK/cpuinfo-$cpu" | cut -d: -f2-) ($(grep -m1 '^CPU part' "$WORK/cpuinfo-$cpu" | cut -d: -f2 | tr -d ' \t'))"
            run_commands "$part" "$rel-$cpu" "$V" "$GUEST/inputs" "$GUEST/out/edge-$cpu" guest "$root" "$cpu" || ok=0
            unbind_cpuinfo "$root"
            rm -rf "$WORK/emu-$rel-edge-$cpu"
            cp -r "$root$GUEST/out/edge-$cpu" "$WORK/emu-$rel-edge-$cpu"
        done
    else
        ok=0
    fi

    # The NumPy-1 routes (Bookworm; tflite-runtime has no wheels beyond Python 3.11).
    for route in $ROUTES; do
        cpu=${QEMU_CPUS%% *}
        case $route in
            sys-litert) pkgs="'$GW' ai-edge-litert scikit-learn 'numpy<2'"; envs= ;;
            tflite-runtime) pkgs="'$GW' tflite-runtime scikit-learn 'numpy<2'"; envs="EDGE_BLOODCLS_INTERPRETER=tflite_runtime" ;;
            *) note "$part" "  unknown route $route"; continue ;;
        esac
        if [ "$PYV" != 3.11 ]; then
            case $route in
                tflite-runtime) note "$part" "  route $route: not possible on Python $PYV: tflite-runtime has wheels for Python <= 3.11 only (2.14.0, the last release)" ;;
                *) note "$part" "  route $route: Bookworm only (NumPy 1 beside Debian's NumPy-1.24 packages); not run on Python $PYV" ;;
            esac
            continue
        fi
        ensure_apt_opencv "$root" "$part" || { note "$part" "  route $route: no python3-opencv from apt"; continue; }
        V=$GUEST_VENV/venv-$route
        if step "$part" "$rel-venv-$route" guest "$root" "" "rm -rf $V && python3 -m venv --system-site-packages $V && $V/bin/pip install $pkgs && $V/bin/pip freeze --all > $GUEST/out/freeze-$route.txt"; then
            cp "$root$GUEST/out/freeze-$route.txt" "$WORK/freeze-$rel-$route.txt"
            note "$part" "    pip install $pkgs (venv --system-site-packages, apt python3-opencv) resolved: $(grep -iE '^(ai-edge-litert|tflite-runtime|tflite_runtime|numpy|scikit-learn)==' "$WORK/freeze-$rel-$route.txt" | tr '\n' ' ')"
            bind_cpuinfo "$root" "$cpu"
            GUEST_ENV=$envs run_commands "$part" "$rel-$route" "$V" "$GUEST/inputs" "$GUEST/out/$route" guest "$root" "$cpu" || true
            unbind_cpuinfo "$root"
            rm -rf "$WORK/emu-$rel-$route"
            cp -r "$root$GUEST/out/$route" "$WORK/emu-$rel-$route"
        fi
    done
    cleanup
    if [ $ok = 1 ]; then STATUS[$rel]=RAN; fi
done

# ------------------------------------------------------------------ native, the same commands
note "$COMMON" ""
if [ -n "$FREEZE_PIN" ]; then
    # The versions pip chose on the emulated side, so that only the machine differs.
    grep -iE '^(ai-edge-litert|numpy|opencv-python-headless|pillow|scikit-learn|scipy|click|joblib|threadpoolctl)==' "$FREEZE_PIN" >"$WORK/constraints.txt" || true
    note "$COMMON" "native edge install pinned to the emulated side's versions ($(basename "$FREEZE_PIN")): $(tr '\n' ' ' <"$WORK/constraints.txt")"
    CONSTRAINT=(-c "$WORK/constraints.txt")
else
    CONSTRAINT=()
fi
native_ok=0
if step "$COMMON" "native-venv-edge" "$NVENV/bin/pip" install "$WHEEL[edge]" "${CONSTRAINT[@]}"; then
    native_ok=1
elif ((${#CONSTRAINT[@]})); then
    note "$COMMON" "  (those versions do not all exist for the native Python $("$NVENV/bin/python" -V 2>&1 | cut -d' ' -f2); installing unpinned)"
    if step "$COMMON" "native-venv-edge-unpinned" "$NVENV/bin/pip" install "$WHEEL[edge]"; then native_ok=1; fi
fi
if [ $native_ok = 1 ]; then
    "$NVENV/bin/pip" freeze --all >"$WORK/freeze-native.txt"
    grep -qiE '^(tensorflow|tf-|tf_)' "$WORK/freeze-native.txt" && note "$COMMON" "  TensorFlow arrived natively!" \
        || note "$COMMON" "  no TensorFlow in the native venv (pip freeze)"
    run_commands "$COMMON" native "$NVENV" "$INPUTS" "$WORK/native" native_sh || true
fi

# ------------------------------------------------------------------ compare, log, verdict
rc=0
for rel in $RELEASES; do
    part=$WORK/$rel.log
    note "$part" ""
    emus=()
    for cpu in $QEMU_CPUS; do
        [ -d "$WORK/emu-$rel-edge-$cpu" ] && emus+=(--emulated "$cpu=$WORK/emu-$rel-edge-$cpu")
    done
    for route in $ROUTES; do
        [ -d "$WORK/emu-$rel-$route" ] && emus+=(--emulated "$route=$WORK/emu-$rel-$route")
    done
    if ((${#emus[@]})); then
        note "$part" "comparison, $rel (emulated) vs native:"
        set +e
        # The main install ([edge], each CPU) decides; the routes are reported separately.
        main=()
        for cpu in $QEMU_CPUS; do
            [ -d "$WORK/emu-$rel-edge-$cpu" ] && main+=(--emulated "$rel-$cpu=$WORK/emu-$rel-edge-$cpu")
        done
        "$NATIVE_PY" "$REPO/scripts/pi_compare.py" compare --native "$WORK/native" "${main[@]}" \
            --manifest "$MODEL_JSON" --log "$part"
        crc=$?
        for route in $ROUTES; do
            if [ -d "$WORK/emu-$rel-$route" ]; then
                note "$part" ""
                note "$part" "install route $route (reported, not part of the verdict):"
                "$NATIVE_PY" "$REPO/scripts/pi_compare.py" compare --native "$WORK/native" \
                    --emulated "$rel-$route=$WORK/emu-$rel-$route" --manifest "$MODEL_JSON" --log "$part"
                rrc=$?
                note "$part" "route $route: $([ $rrc = 0 ] && echo "same results as native" || echo "differs or failed: see above")"
            fi
        done
        set -e
        if [ $crc = 0 ] && [ "${STATUS[$rel]}" = RAN ]; then STATUS[$rel]=PASS; else STATUS[$rel]=FAIL; fi
    fi
    note "$part" ""
    note "$part" "pi-check $rel: ${STATUS[$rel]} ($(date -u +%FT%TZ))"
    cat "$COMMON" "$part" >"$LOG_DIR/pi_check_$rel.log"
    echo "log: $LOG_DIR/pi_check_$rel.log"
    for req in $REQUIRED; do
        if [ "$req" = "$rel" ] && [ "${STATUS[$rel]}" != PASS ]; then rc=1; fi
    done
done
echo
for rel in $RELEASES; do
    echo "pi-check $rel: ${STATUS[$rel]}$([[ " $REQUIRED " == *" $rel "* ]] || echo " (not required)")"
done
if [ "${PI_KEEP:-0}" = 1 ] || [ $rc != 0 ]; then
    echo "work directory kept: $WORK"
else
    rm -rf "$WORK"
fi
exit $rc
