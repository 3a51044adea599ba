#!/usr/bin/env bash
# Build the two zips Terraform uploads, into build/ next to this script:
#   build/layer.zip     lambda_package/requirements.txt for Lambda's python3.12 on <arch>
#                       (manylinux wheels only, never this machine's builds), under python/
#   build/function.zip  the initial deployment package: handler.py without a model, the same
#                       bytes as the local bootstrap's (devtools.bootstrap.placeholder_zip)
# Usage: infra/terraform/build_artifacts.sh [x86_64|arm64]   (default x86_64; match lambda_architecture)
# Needs the project's virtualenv (make install) and the package index.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
arch="${1:-x86_64}"

case "$arch" in
  x86_64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) echo "build_artifacts.sh: architecture must be x86_64 or arm64, got '$arch'" >&2; exit 2 ;;
esac

build="$here/build"
rm -rf "$build/layer" "$build/layer.zip" "$build/function.zip"
mkdir -p "$build/layer/python"

# Lambda's python3.12 runs on Amazon Linux 2023 (glibc 2.34): any manylinux wheel up to 2_34 fits.
platforms=()
for tag in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014; do
  platforms+=(--platform "${tag}_${machine}")
done
"$python" -m pip install --quiet --disable-pip-version-check --no-compile \
  --target "$build/layer/python" --implementation cp --python-version 3.12 --only-binary=:all: \
  "${platforms[@]}" -r "$root/lambda_package/requirements.txt"

(cd "$build/layer" && "$python" -m zipfile -c "$build/layer.zip" python)
PYTHONPATH="$root/plugins:$root" "$python" -c '
import sys
from devtools.bootstrap import placeholder_zip
open(sys.argv[1], "wb").write(placeholder_zip())
' "$build/function.zip"

rm -rf "$build/layer"
ls -l "$build"/*.zip
