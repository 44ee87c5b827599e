#!/usr/bin/env bash
# Installs Debian/Ubuntu packages unless they are all installed already;
# shared by the tools/ci-setup-*.sh scripts. Needs root or sudo.
#
#   tools/apt-install.sh NAME PACKAGE...     (NAME prefixes the messages)
set -euo pipefail
name=$1
shift
packages=("$@")

have_all() {
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
  done
}

if have_all; then
  echo "$name: ${packages[*]} already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  echo "$name: no apt-get here; install ${packages[*]} by hand" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "$name: need root or sudo to install ${packages[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
echo "$name: installed ${packages[*]}"
