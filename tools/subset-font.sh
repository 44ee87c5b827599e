#!/usr/bin/env bash
# Rebuilds data/fonts/DejaVuSans-ascii.ttf, the font embedded in the
# training chart (src/plot.rs): printable ASCII plus a few dashes, cut from
# Debian's fonts-dejavu-core DejaVuSans.ttf with fontTools (pinned wheel).
# Licence: data/fonts/LICENSE-DejaVu.txt (Bitstream Vera; DejaVu changes
# are public domain).
set -euo pipefail
src=${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${TMPDIR:-/tmp}/gpurt-fonttools
[ -x "$venv/bin/pyftsubset" ] || {
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q fonttools==4.55.0
}
"$venv/bin/pyftsubset" "$src" \
    --unicodes="U+0020-007E,U+00B7,U+2013,U+2014,U+2212" \
    --no-hinting --desubroutinize \
    --output-file="$root/data/fonts/DejaVuSans-ascii.ttf"
ls -l "$root/data/fonts/DejaVuSans-ascii.ttf"
