#!/usr/bin/env bash
# Installs the pinned PTX toolchain that builds and checks kernels/*.ptx:
# NVRTC (to compile kernels/*.cu) and ptxas (to assemble the PTX for sm_80
# and sm_90), both from NVIDIA's PyPI wheels, both CUDA 12.0.
#
# Why 12.0: NVRTC 12.0 emits PTX ISA 8.0, which every CUDA 12 and 13 driver
# (R525 and newer) can JIT; ptxas of the same release is the assembler such
# a driver embeds, so "it assembles here" means "it loads there".
#
# Output: target/ptx-tools/py (the wheels) and target/ptx-tools/env, the
# KEY="value" lines that tools/build-ptx.sh, tools/verify-ptx.sh and
# tests/cuda/ptx.rs read (override the folder with GPURT_PTX_TOOLS).
# .ci/run calls this before `cargo test --release`; it is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_WHEELS_VERSION=12.0.140
tools="${GPURT_PTX_TOOLS:-$PWD/target/ptx-tools}"
env_file="$tools/env"

if [ -f "$env_file" ] && grep -qx "PTX_TOOLS_VERSION=\"$CUDA_WHEELS_VERSION\"" "$env_file"; then
  # shellcheck source=/dev/null
  . "$env_file"
  if [ -x "${PTXAS:-}" ] && [ -f "${NVRTC_LIB:-}" ]; then
    echo "ci-setup-cuda: PTX tools $CUDA_WHEELS_VERSION already in $tools"
    exit 0
  fi
fi

python=$(command -v python3 || true)
if [ -z "$python" ]; then
  echo "ci-setup-cuda: python3 is needed to install the PTX tools" >&2
  exit 1
fi
mkdir -p "$tools"
rm -rf "$tools/py"
PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --target "$tools/py" \
  "nvidia-cuda-nvrtc-cu12==$CUDA_WHEELS_VERSION" \
  "nvidia-cuda-nvcc-cu12==$CUDA_WHEELS_VERSION"

ptxas="$tools/py/nvidia/cuda_nvcc/bin/ptxas"
nvrtc="$tools/py/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
chmod +x "$ptxas"
"$ptxas" --version | tail -n 1
cat >"$env_file" <<ENV
PTX_TOOLS_VERSION="$CUDA_WHEELS_VERSION"
PTXAS="$ptxas"
NVRTC_LIB="$nvrtc"
PYTHON="$python"
ENV
echo "ci-setup-cuda: PTX tools $CUDA_WHEELS_VERSION installed in $tools"
