#!/usr/bin/env bash
# Installs the datasets the tests read from system folders: Debian's
# dataset-fashion-mnist (Zalando's Fashion-MNIST IDX files under
# /usr/share/datasets/fashion-mnist, read by `--data fashion-mnist`).
# Without it the Fashion-MNIST test prints SKIPPED, except under CI
# (CI=true), where it fails.
#
# .ci/run calls every tools/ci-setup-*.sh before `cargo test --release`;
# this one is idempotent and needs root or sudo (Debian/Ubuntu apt).
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" ci-setup-data dataset-fashion-mnist
