#!/usr/bin/env bash
# Correctness of the flight software on aarch64, on this x86-64 machine, under qemu user-mode
# emulation (issue #15). TIMINGS UNDER EMULATION MEAN NOTHING: this checks correctness only.
#
#   scripts/verify_aarch64.sh            # build the sysroot once (cached), then verify
#   AARCH64_CACHE=DIR scripts/verify_aarch64.sh
#   QEMU_CPUS="cortex-a72 max" scripts/verify_aarch64.sh   # the emulated CPU models to run on
#
# 1. sysroot: Debian bookworm's arm64 python3.11 and its libraries (apt-get download + dpkg -x),
#    the flight's wheels for manylinux aarch64 (pip --platform), a fake ARM /proc/cpuinfo (qemu
#    -L maps absolute paths into the sysroot first; onnxruntime's cpuinfo reads it).
# 2. `python -m models verify` on aarch64: INT8 golden vectors bit-exact, FP32 within tolerance.
# 3. a short flight run in-process (payload_sim.verify_aarch64): frames rendered on x86, pushed
#    through flight.app.FlightApp on x86 and on aarch64, science packets compared byte for byte.
#    The native calibration kernel (flight/native, issue #16): x86 runs with it and without it,
#    aarch64 with the board's library cross-compiled here (gcc-aarch64-linux-gnu, installed when
#    missing); all must give the same packets. Without a cross-compiler aarch64 runs numpy/OpenCV.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${AARCH64_CACHE:-$ROOT/.cache/aarch64}
SYSROOT=$CACHE/sysroot
SITE=$CACHE/site
PY=${PY:-$ROOT/.venv/bin/python}
QEMU_CPUS=${QEMU_CPUS:-"cortex-a72 max"}
# a blank list would run no emulated CPU and still print OK
if [ -z "${QEMU_CPUS// /}" ]; then echo "verify-aarch64: QEMU_CPUS names no CPU model" >&2; exit 2; fi
CONSTRAINTS=${CONSTRAINTS:-$ROOT/constraints/aarch64-verify.txt}
t0=$(date +%s)
SUDO=""; if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! command -v qemu-aarch64-static >/dev/null; then
  echo "verify-aarch64: installing qemu-user-static"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-user-static >/dev/null
fi

# Debian bookworm arm64 packages: the interpreter and what it, numpy, onnxruntime, cv2 and zmq link.
DEBS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1 libstdc++6 zlib1g
libexpat1 libffi8 libssl3 libsqlite3-0 libbz2-1.0 liblzma5 libuuid1 libncursesw6 libtinfo6 libreadline8
libcrypt1 libdb5.3 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2
libkeyutils1 libgdbm6 libzstd1 libgomp1"
if [ ! -f "$SYSROOT/.done" ]; then
  echo "verify-aarch64: building the arm64 sysroot in $SYSROOT (once)"
  rm -rf "$SYSROOT" "$CACHE/debs"; mkdir -p "$SYSROOT" "$CACHE/debs"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then $SUDO dpkg --add-architecture arm64; $SUDO apt-get update -qq; fi
  (cd "$CACHE/debs" && apt-get download -qq $(for d in $DEBS; do echo "$d:arm64"; done))
  for f in "$CACHE"/debs/*.deb; do dpkg -x "$f" "$SYSROOT"; done
  touch "$SYSROOT/.done"
fi
if [ ! -f "$SITE/.done" ] || [ "$CONSTRAINTS" -nt "$SITE/.done" ]; then
  echo "verify-aarch64: installing the flight's aarch64 wheels into $SITE"
  rm -rf "$SITE"; mkdir -p "$SITE"
  # pip does not widen a --platform to older glibc tags itself: list every one bookworm (glibc 2.36) runs
  PLATFORMS="--platform manylinux2014_aarch64"; for v in $(seq 17 36); do PLATFORMS="$PLATFORMS --platform manylinux_2_${v}_aarch64"; done
  "$PY" -m pip install --quiet --disable-pip-version-check --target "$SITE" $PLATFORMS \
    --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: -c "$CONSTRAINTS" \
    numpy onnxruntime opencv-python-headless pyzmq spacepackets cfdp-py psutil
  touch "$SITE/.done"
fi
# A Cortex-A72 (Raspberry Pi 4) as Linux shows it, one entry per CPU of this host's
# /sys/devices/system/cpu/possible (onnxruntime's cpuinfo reads both and aborts when they disagree).
mkdir -p "$SYSROOT/proc"
ncpu=$(( $(cut -d- -f2 /sys/devices/system/cpu/possible | cut -d, -f1) + 1 ))
: > "$SYSROOT/proc/cpuinfo"
for i in $(seq 0 $((ncpu - 1))); do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i" >> "$SYSROOT/proc/cpuinfo"
done
t1=$(date +%s)
echo "verify-aarch64: sysroot ready ($((t1 - t0)) s)"

AA="qemu-aarch64-static -L $SYSROOT"
run_aa() {  # run the arm64 python with the checkout and the aarch64 site-packages
  env -i PATH=/usr/bin:/bin HOME="$HOME" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0 \
    PYTHONPATH="$ROOT:$SITE" QEMU_CPU="$1" $AA "$SYSROOT/usr/bin/python3.11" "${@:2}"
}
AA_NATIVE=off
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  echo "verify-aarch64: installing gcc-aarch64-linux-gnu (the board's native kernels)"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc-aarch64-linux-gnu; } >/dev/null 2>&1 \
    || echo "verify-aarch64: could not install gcc-aarch64-linux-gnu: aarch64 runs the numpy/OpenCV calibration"
fi
if command -v aarch64-linux-gnu-gcc >/dev/null; then
  make --no-print-directory -C "$ROOT" native-aarch64 && AA_NATIVE=required
fi
X86_NATIVE=off
if [ -f "$ROOT/flight/native/libflight_kernels.$(uname -m).so" ]; then X86_NATIVE=required; fi

WORK=$(mktemp -d /tmp/verify-aarch64.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m payload_sim.verify_aarch64 prepare "$WORK/frames"
"$PY" -m payload_sim.verify_aarch64 run "$WORK/frames" --out "$WORK/x86_64.json" --native "$X86_NATIVE"
if [ "$X86_NATIVE" = required ]; then  # the kernel against the numpy/OpenCV path on the same frames
  "$PY" -m payload_sim.verify_aarch64 run "$WORK/frames" --out "$WORK/x86_64-numpy.json" --native off
  "$PY" -m payload_sim.verify_aarch64 compare "$WORK/x86_64.json" "$WORK/x86_64-numpy.json"
fi
for cpu in $QEMU_CPUS; do
  echo "verify-aarch64: --- emulated CPU $cpu ---"
  run_aa "$cpu" -c 'import platform, numpy, onnxruntime, cv2, zmq; print("aarch64 python", platform.python_version(), platform.machine(), "numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__, "cv2", cv2.__version__, "pyzmq", zmq.__version__)'
  run_aa "$cpu" -m models verify
  run_aa "$cpu" -m payload_sim.verify_aarch64 run "$WORK/frames" --out "$WORK/aarch64-$cpu.json" --native "$AA_NATIVE"
  "$PY" -m payload_sim.verify_aarch64 compare "$WORK/x86_64.json" "$WORK/aarch64-$cpu.json"
done
echo "verify-aarch64: OK in $(( $(date +%s) - t0 )) s (correctness only: timings under qemu mean nothing)"
