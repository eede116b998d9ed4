# Shortcuts; the README's two commands (scripts/run.sh, scripts/test.sh) need nothing else.
# setup.sh --bench also installs the benchmarks' peers (the `bench` rows of scripts/programs.txt).
.PHONY: bench bench-quick soak soak-quick test run

bench:          ## every benchmark, ours and the peers alternately (minutes): benchmarks/RESULTS.md + plots
	bash scripts/setup.sh --bench
	.venv/bin/python -m pip install -q -e '.[bench]'
	.venv/bin/python benchmarks/run_all.py

bench-quick:    ## every benchmark for a few seconds each, to prove they run (CI)
	bash scripts/setup.sh --bench
	.venv/bin/python -m pip install -q -e '.[bench]'
	.venv/bin/python benchmarks/run_all.py --quick

soak:           ## the reliability soak against the kernel (issue 22; tens of minutes): benchmarks/results/soak.json + soak_rss.png
	bash scripts/setup.sh --bench
	.venv/bin/python -m pip install -q -e '.[bench]'
	.venv/bin/python benchmarks/soak.py

soak-quick:     ## the same at the CI's sizes (a few minutes); tests/test_reliability.py runs its cases in CI
	.venv/bin/python benchmarks/soak.py --quick

test:
	bash scripts/test.sh

run:
	bash scripts/run.sh
