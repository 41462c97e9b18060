#!/usr/bin/env bash
# Run on the development machine before sending the tree to a GPU machine. Copies the header-only
# dependencies that the device checks compile against (fmt, spdlog, nlohmann-json) from the
# Debian packages here into build-gpu-deps/include. That folder is ignored by git (/build*/), so
# the device call must name it in `carry`. The GPU machine has no Debian packages and no network.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dest="$root/build-gpu-deps/include"

rm -rf "$root/build-gpu-deps"
mkdir -p "$dest"
for pair in fmt:format.h spdlog:spdlog.h nlohmann:json.hpp; do
  lib=${pair%%:*} header=${pair#*:}
  if [[ ! -f "/usr/include/$lib/$header" ]]; then
    echo "prepare.sh: /usr/include/$lib/$header not found (install lib$lib-dev)" >&2
    exit 1
  fi
  cp -r "/usr/include/$lib" "$dest/"
done
echo "prepare.sh: $(du -sh "$root/build-gpu-deps" | cut -f1) in $root/build-gpu-deps"
echo 'prepare.sh: now run on the device: command "bash tests/gpu/run.sh", carry ["build-gpu-deps"]'
