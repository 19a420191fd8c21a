#!/usr/bin/env bash
# System packages the project uses where they exist; everything else comes from pip.
#   OpenBLAS            fast float32 matmuls for MLX's Linux CPU backend (30x the bundled BLAS)
#   RISC-V binutils     GNU as for RISC-V (the scorer also works with pip's ziglang alone)
#   chromium + driver   the MLflow UI browser test
# On macOS nothing is needed: MLX uses Accelerate and Metal, and `ziglang` (pip) assembles RISC-V.
set -euo pipefail
packages="libopenblas0-pthread binutils-riscv64-unknown-elf chromium chromium-driver"
if [[ "$(uname -s)" != Linux ]] || ! command -v apt-get >/dev/null; then
    exit 0
fi
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[[ -z "$missing" ]] && exit 0
sudo=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else
        echo "note: not root; skipping apt packages:$missing (install them for a fast BLAS and the browser test)" >&2
        exit 0
    fi
fi
echo "installing:$missing"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
