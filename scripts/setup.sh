#!/usr/bin/env bash
# Shared set-up for the README's commands: the programs of scripts/programs.txt (the one list of every
# external program the tests, the benchmarks and the package run; apt-get as root), a virtualenv in
# .venv, the package (with its native part, built by cffi) and its test extra.  Safe to run again:
# each step is skipped when already done.  --bench also installs the benchmarks' peers (make bench).
set -euo pipefail
cd "$(dirname "$0")/.."

bench=0
for arg in "$@"; do
    case $arg in
        --bench) bench=1 ;;
        *) echo "usage: scripts/setup.sh [--bench]" >&2; exit 2 ;;
    esac
done

# A program counts as present on PATH or in an sbin directory (a non-root PATH may lack those).
present() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]; }

need_apt=()
while read -r program package when _; do
    [[ -z $program || $program == \#* || $package == pip:* ]] && continue
    [[ $when == bench && $bench -eq 0 ]] && continue
    present "$program" && continue
    [[ " ${need_apt[*]} " == *" $package "* ]] || need_apt+=("$package")
done < <(sed 's/#.*//' scripts/programs.txt)
# Libraries (packages, not programs) of the optional native ports, checked with dpkg-query:
# af_xdp needs libxdp-dev and libbpf-dev (their ring helpers are static inline; libxdp1 brings the
# default XDP program, /usr/lib/x86_64-linux-gnu/bpf/xsk_def_xdp_prog*.o) and pkg-config to find them.
for package in libxdp-dev libbpf-dev pkg-config; do
    command -v dpkg-query >/dev/null 2>&1 || break  # not Debian: the shim is skipped when they are missing
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" && continue
    [[ " ${need_apt[*]} " == *" $package "* ]] || need_apt+=("$package")
done
# python3 -m venv needs the venv and ensurepip modules (a package, not a program)
python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
# Libraries (not programs): the DPDK port (trio_yastack.nic.dpdk) builds its shim against libdpdk-dev
# (pkg-config libdpdk) and runs the PMDs its tests use: net_af_packet, net_af_xdp and the ring mempool.
for package in pkg-config libdpdk-dev librte-net-af-packet23 librte-net-af-xdp23 librte-mempool-ring23; do
    dpkg -s "$package" >/dev/null 2>&1 || need_apt+=("$package")
done
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
# the cffi extension modules that built (and import): without them the package runs on its Python twins
.venv/bin/python - <<'EOF'
import importlib
from pathlib import Path

names = sorted({".".join(p.with_suffix("").with_suffix("").parts) for p in Path("trio_yastack").rglob("*_cffi*.so")})
for name in names:
    importlib.import_module(name)
print("setup: native part", f"built (C): {', '.join(names)}" if names else "NOT built: pure-Python twins in use")
EOF
