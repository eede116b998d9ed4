#!/usr/bin/env bash
# The main job: set up, then serve the example ASGI app (examples/hello.py) with hypercorn over
# the user-space stack on a TAP device.  The stack is 198.18.0.2 on TAP yas0, whose kernel side
# gets 198.18.0.1/24 (RFC 2544's benchmarking range), so this machine reaches the app at
# http://198.18.0.2:8000/ while it runs; Ctrl-C (or SIGTERM) stops it gracefully.
# Extra arguments go to `yastack serve` (e.g. --access-log - --bind 8080).
# YASTACK_NETNS=NAME runs it inside that network namespace (made if missing) instead; then reach
# it with `ip netns exec NAME curl ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ $(id -u) -ne 0 ]] && ! ip link show yas0 >/dev/null 2>&1; then
    echo "run: creating TAP yas0 needs root (CAP_NET_ADMIN); run as root, or have an administrator" \
         "make it: ip tuntap add dev yas0 mode tap user $USER vnet_hdr" >&2
    exit 1
fi
serve=(.venv/bin/yastack serve examples/hello.py:app --nic tap:yas0 --ip 198.18.0.2/24 --bind 8000 "$@")
if [[ -n ${YASTACK_NETNS:-} ]]; then
    ip netns list | grep -qw "$YASTACK_NETNS" || { ip netns add "$YASTACK_NETNS"; ip -n "$YASTACK_NETNS" link set lo up; }
    exec ip netns exec "$YASTACK_NETNS" "${serve[@]}"
fi
exec "${serve[@]}"
