#!/usr/bin/env bash
# The Python package as a user gets it: `pip install ./python` in a fresh virtual environment
# (maturin builds the abi3 wheel from source), then its pytest suite against real servers
# (uvicorn and gunicorn with two workers each, a throwaway PostgreSQL and Redis). Run by .ci/run;
# by hand: scripts/python-tests.sh [pytest arguments].
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${TOLLGATE_PYTHON_VENV:-$(mktemp -d)/venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    pytest httpx starlette fastapi uvicorn gunicorn flask anyio trio mypy
echo "-- pip install ./python (maturin, release build)"
"$venv/bin/pip" install --quiet --disable-pip-version-check ./python
# The installed package, not the source tree: pytest runs from the tests' directory, whose
# parent (python/, which holds the package's sources without the native module) is not on the path.
"$venv/bin/python" -c 'import tollgate, sys; print("tollgate", tollgate.__version__, "from", tollgate.__file__)'
echo "-- mypy --strict over the installed package (its stubs and py.typed shipped in the wheel)"
(cd / && "$venv/bin/mypy" --strict --no-incremental -p tollgate)
cd python/tests
"$venv/bin/pytest" -q -p no:cacheprovider "$@"
