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
exec "$(dirname "$0")/apt-install.sh" ci-setup-wgpu mesa-vulkan-drivers libvulkan1
