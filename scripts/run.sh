#!/usr/bin/env bash
# The main job: set up, then run the demo of two stacks on a virtual wire (ARP, ping, UDP,
# fragments, ICMP errors), printing every frame that passes.  Extra arguments go to
# `yastack demo` (e.g. --loss 0.2 --pcap demo.pcap).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/yastack demo "$@"
