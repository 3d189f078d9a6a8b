#!/usr/bin/env bash
# Installs what the tests start from their binaries (Redis, PostgreSQL), the tool that validates
# docker-compose.yml and the browser that renders `rodin report`'s page, where this machine can
# (apt-get, as root or with sudo). Anything already installed is left alone, so a second run
# installs nothing. Used by `make test` and by CI (.ci/run). Without apt-get or the rights to use
# it, it says what is missing and the tests that need it are skipped (pytest ends with one line
# naming them and the command that brings them).
set -uo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
  || missing+=(postgresql)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else
    echo "test servers: missing ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "test servers: missing ${missing[*]} and no apt-get here; the tests that need them will be skipped" >&2
  exit 0
fi
echo "test servers: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
# The packages' own services are not started (no init system here, and the tests start their
# own servers on free ports).
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "test servers: could not install ${missing[*]}; the tests that need them will be skipped" >&2
exit 0
