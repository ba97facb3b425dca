#!/usr/bin/env bash
# Install what the benchmark needs outside the project venv: wrk, a C compiler and the open-loop
# generator built with it, and the seed service's own venv. Idempotent: a second run only checks.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
seed_venv="${here}/.venv-seed"

# wrk is the closed-loop load generator, cc builds the open-loop one (Debian packages).
missing=()
if ! command -v wrk >/dev/null 2>&1; then missing+=(wrk); fi
if ! command -v cc >/dev/null 2>&1; then missing+=(gcc libc6-dev); fi
if [ "${#missing[@]}" -gt 0 ]; then
    sudo_cmd=""
    if [ "$(id -u)" != "0" ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

# The open-loop generator (bench/openloop.py rebuilds it too when the source is newer).
mkdir -p "${here}/.bin"
cc -O2 -Wall -Wextra -o "${here}/.bin/openloop" "${here}/openloop.c" -lm

# The seed service, installed as its users install it, plus numpy for the benchmark models.
if [ ! -x "${seed_venv}/bin/uvicorn" ]; then
    "$python" -m venv "$seed_venv"
    "${seed_venv}/bin/pip" install -q --upgrade pip
    "${seed_venv}/bin/pip" install -q "haystack-ml-stack==0.1.0" "uvicorn[standard]" numpy
fi
"${seed_venv}/bin/python" -c "import haystack_ml_stack, cloudpickle, numpy; print('seed venv ok, cloudpickle', cloudpickle.__version__)"
