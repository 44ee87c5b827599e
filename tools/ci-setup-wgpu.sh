#!/usr/bin/env bash
# Installs a Vulkan driver for the wgpu backend's tests: Mesa's lavapipe
# (a software Vulkan device on the CPU; correct, not fast) and the Vulkan
# loader. With it, `gpurt devices` lists `llvmpipe (Vulkan, Cpu)` and the
# wgpu test suites (tests/wgpu_*.rs) run instead of printing SKIPPED.
#
# .ci/run calls every tools/ci-setup-*.sh before `cargo test --release`;
# this one is idempotent and needs root or sudo (Debian/Ubuntu apt).
# A script cannot export into its parent, so .ci/run itself sets
# GPURT_REQUIRE_WGPU=1 (turning a missing adapter into a failure) and
# XDG_RUNTIME_DIR (which Mesa warns about when unset).
set -euo pipefail

packages=(mesa-vulkan-drivers libvulkan1)

have_all() {
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
  done
}

if have_all; then
  echo "ci-setup-wgpu: ${packages[*]} already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  echo "ci-setup-wgpu: no apt-get here; install a Vulkan driver (lavapipe: ${packages[*]}) by hand" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "ci-setup-wgpu: need root or sudo to install ${packages[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
echo "ci-setup-wgpu: installed ${packages[*]}"
