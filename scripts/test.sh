#!/usr/bin/env bash
# Run the test suite with the project's virtual environment. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROMPT_FT_DATASETS_DIR="${PROMPT_FT_DATASETS_DIR:-$(cd .. && pwd)/shared/data}"
exec .venv/bin/python -m pytest -ra "$@"
