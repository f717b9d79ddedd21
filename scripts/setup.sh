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
# llama.cpp is built for x86-64 with AVX2, not with -march=native. A native build on a CPU with AMX
# (Intel Sapphire Rapids) crashed in llama_decode for every batch of more than one token, and a
# native wheel from pip's cache crashes on a CPU that lacks the builder's instructions. The wheel
# is built without pip's cache and rebuilt only when the version or CMAKE_ARGS change.
LLAMA_CPP_VERSION=$(sed -n 's/^llama-cpp-python==//p' requirements.txt)
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"}
LLAMA_CPP_BUILD="llama-cpp-python==$LLAMA_CPP_VERSION $CMAKE_ARGS"
if [ "$(cat .venv/llama_cpp_build 2>/dev/null)" != "$LLAMA_CPP_BUILD" ]; then
    .venv/bin/python -m pip install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$LLAMA_CPP_VERSION"
    echo "$LLAMA_CPP_BUILD" > .venv/llama_cpp_build
fi
.venv/bin/python -m pip install -r requirements.txt
# promptsource 0.2.3 caps Python below 3.10 in its metadata and pins old dependencies.
# Only its templates YAML is read, so it is installed without dependencies.
.venv/bin/python -m pip install --no-deps --ignore-requires-python promptsource==0.2.3
.venv/bin/python -m pip install --no-deps -e .

if [ "${WITH_SYSTEM:-0}" = "1" ]; then
    bash scripts/install_system_packages.sh
fi
echo "setup finished: activate with 'source .venv/bin/activate'"
