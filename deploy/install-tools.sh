#!/usr/bin/env bash
# Install promtool and the Prometheus server (Debian's `prometheus` package) for the deploy/
# tests, when they are missing and this runs as root. Without root it only says so: those
# tests then skip (and fail instead where SCORER_REQUIRE_DEPLOY_TOOLS=1, as in CI).
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
    echo "deploy tools: Debian's prometheus package is missing and cannot be installed here" \
        "(needs root and apt-get); the Prometheus tests will skip" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
