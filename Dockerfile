# The scorer's image: `docker build -t scorer .` (no image is built or published by this
# repository's tests: they lint this file and check it against the repository and deploy/).
#
# Runs as a numeric non-root user with a read-only root filesystem: the process writes only to
# /tmp (gunicorn's worker heartbeat files) and PROMETHEUS_MULTIPROC_DIR, both mounted emptyDirs
# in deploy/base/deployment.yaml.

# No HEALTHCHECK: the kubelet ignores it; the probes are in deploy/base/deployment.yaml.
# checkov:skip=CKV_DOCKER_2:Kubernetes probes replace HEALTHCHECK, which the kubelet ignores

# --- build: a virtualenv with the service and its dependencies ---------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/scorer
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config ./config
COPY scorer ./scorer
RUN /opt/scorer/bin/pip install --no-cache-dir . \
    && /opt/scorer/bin/python -m compileall -q /opt/scorer

# --- run: the virtualenv and the two entry files, nothing else ---------------------------------
FROM python:3.11-slim-bookworm
ENV PATH=/opt/scorer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
COPY --from=build /opt/scorer /opt/scorer
WORKDIR /app
COPY gunicorn.conf.py wsgi.py ./
# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
# Exec form: gunicorn is PID 1 and receives SIGTERM itself, then drains (graceful_timeout).
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
