#!/usr/bin/env bash
# System packages the project uses where they exist; everything else comes from pip.
#   bash scripts/install-system-deps.sh core       what training and scoring use (make smoke, make setup)
#   bash scripts/install-system-deps.sh browser    what the MLflow UI browser test uses (make test, make browser-deps)
#   DRY_RUN=1 bash scripts/install-system-deps.sh core browser    say what would be installed, install nothing
# Every package is named, with what it is for, before anything is installed.
# On macOS nothing is needed: MLX uses Accelerate and Metal, and `ziglang` (pip) assembles RISC-V.
set -euo pipefail

declare -A why=(
    [libopenblas0-pthread]="fast float32 matmuls for MLX's Linux CPU backend (30x the bundled BLAS)"
    [binutils-riscv64-unknown-elf]="GNU as for RISC-V (the scorer also works with pip's ziglang alone)"
    [chromium]="the browser the MLflow UI test drives"
    [chromium-driver]="chromedriver, Selenium's link to chromium"
)
declare -A group=(
    [core]="libopenblas0-pthread binutils-riscv64-unknown-elf"
    [browser]="chromium chromium-driver"
)

packages=""
for name in "${@:-core}"; do
    if [[ -z "${group[$name]:-}" ]]; then
        echo "error: unknown group '$name'; expected: core, browser" >&2
        exit 2
    fi
    packages="$packages ${group[$name]}"
done

if [[ "$(uname -s)" != Linux ]] || ! command -v apt-get >/dev/null; then
    exit 0
fi
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[[ -z "$missing" ]] && exit 0

sudo=""
if [[ $(id -u) -ne 0 ]] && [[ -z "${DRY_RUN:-}" ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else
        echo "note: not root; skipping apt packages:$missing" >&2
        for p in $missing; do echo "  $p: ${why[$p]}" >&2; done
        exit 0
    fi
fi
verb="installing"
[[ -n "${DRY_RUN:-}" ]] && verb="would install"
echo "$verb system packages (${sudo:+sudo }apt-get install):"
for p in $missing; do echo "  $p: ${why[$p]}"; done
[[ -n "${DRY_RUN:-}" ]] && exit 0
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
