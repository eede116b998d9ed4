#!/usr/bin/env bash
# Shared set-up for the README's commands: system packages, a virtualenv in .venv, the package
# (with its native part, built by cffi) and its test extra.  Safe to run again: each step is
# skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v tshark >/dev/null 2>&1 || need_apt+=(tshark)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v make >/dev/null 2>&1 || need_apt+=(make)
# kernel-side tools of the TAP interop tests (run inside private network namespaces)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v ping >/dev/null 2>&1 || need_apt+=(iputils-ping)
command -v sysctl >/dev/null 2>&1 || need_apt+=(procps)
# HTTP load generators of the ASGI serving tests (kernel-side clients)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
# the backend and the peer of the proxy benchmark (benchmarks/bench_proxy.py runs its own nginx
# processes, with their own config files, inside a namespace of its own; the system service is unused)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx)
python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "setup: installing ${need_apt[*]} (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: missing ${need_apt[*]}; install them (apt-get install ${need_apt[*]}) or run as root" >&2
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
stamp=.venv/.installed
newer_native=$(find native -newer "$stamp" -type f 2>/dev/null | head -1 || true)
if [[ ! -f $stamp || pyproject.toml -nt $stamp || setup.py -nt $stamp || -n $newer_native ]]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi
.venv/bin/python -c "import trio_yastack._native as n; print('setup: native checksum', 'built (C)' if n.NATIVE else 'NOT built: pure-Python twin in use')"
