# Shortcuts; the README's two commands (scripts/run.sh, scripts/test.sh) need nothing else.
.PHONY: bench bench-quick test run

bench:          ## every benchmark, ours and the peers alternately (minutes): benchmarks/RESULTS.md + plots
	bash scripts/setup.sh
	command -v iperf3 >/dev/null || (apt-get update -qq && apt-get install -y -qq iperf3 >/dev/null) || true
	.venv/bin/python -m pip install -q -e '.[bench]'
	.venv/bin/python benchmarks/run_all.py

bench-quick:    ## every benchmark for a few seconds each, to prove they run (CI)
	bash scripts/setup.sh
	.venv/bin/python -m pip install -q -e '.[bench]'
	.venv/bin/python benchmarks/run_all.py --quick

test:
	bash scripts/test.sh

run:
	bash scripts/run.sh
