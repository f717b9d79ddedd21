#!/usr/bin/env bash
# Install everything prompt_ft_assets needs into .venv on a fresh machine.
# Usage: bash scripts/setup.sh            (Python packages only)
#        WITH_SYSTEM=1 bash scripts/setup.sh  (also Debian's chromium, chromium-driver and postgresql)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --upgrade pip wheel
# llama-cpp-python compiles llama.cpp with CMake: use both cores.
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
.venv/bin/python -m pip install -r requirements.txt
# promptsource 0.2.3 caps Python below 3.10 in its metadata and pins old dependencies.
# Only its templates YAML is read, so it is installed without dependencies.
.venv/bin/python -m pip install --no-deps --ignore-requires-python promptsource==0.2.3
.venv/bin/python -m pip install --no-deps -e .

if [ "${WITH_SYSTEM:-0}" = "1" ]; then
    bash scripts/install_system_packages.sh
fi
echo "setup finished: activate with 'source .venv/bin/activate'"
