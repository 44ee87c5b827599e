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

packages=(dataset-fashion-mnist)

have_all() {
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
  done
}

if have_all; then
  echo "ci-setup-data: ${packages[*]} already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  echo "ci-setup-data: no apt-get here; install ${packages[*]} by hand, or pass --data fashion-mnist:DIR" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "ci-setup-data: need root or sudo to install ${packages[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
echo "ci-setup-data: installed ${packages[*]}"
