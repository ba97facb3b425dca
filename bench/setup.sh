#!/usr/bin/env bash
# Install what the benchmark needs outside the project venv: wrk and the seed service's own venv.
# Idempotent: a second run only checks.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
seed_venv="${here}/.venv-seed"

# wrk is the load generator (Debian package).
if ! command -v wrk >/dev/null 2>&1; then
    sudo_cmd=""
    if [ "$(id -u)" != "0" ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq wrk
fi

# The seed service, installed as its users install it, plus numpy for the benchmark models.
if [ ! -x "${seed_venv}/bin/uvicorn" ]; then
    "$python" -m venv "$seed_venv"
    "${seed_venv}/bin/pip" install -q --upgrade pip
    "${seed_venv}/bin/pip" install -q "haystack-ml-stack==0.1.0" "uvicorn[standard]" numpy
fi
"${seed_venv}/bin/python" -c "import haystack_ml_stack, cloudpickle, numpy; print('seed venv ok, cloudpickle', cloudpickle.__version__)"
