# Everything a fresh machine needs: Python 3.11 + pip. `make demo` and `make test` install first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch lies on disk; pin it first so nothing pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# pyproject.toml states ranges; constraints.txt holds the exact versions the tests pass with.
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/diffrl train

test: $(STAMP)
	$(PY) -m pytest -q

# pytest exits 5 when no test is selected (none marked slow): not a failure for this target.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# One RL epoch, diffrl vs TRL 0.23.1's DDPOTrainer (own venv: benchmarks/.venv-trl); see docs/performance.md.
.PHONY: bench
bench: $(STAMP)
	nice -n 10 $(PY) benchmarks/bench_epoch.py --flops --cache benchmarks/.cache --out benchmarks/results/latest.json

# Time to target on ShapesWorld color binding, diffrl's defaults vs TRL 0.23.1's DDPOTrainer with its own defaults
# (2 seeds, 20 min of TRL training each, about an hour on 2 cores); see docs/performance.md.
.PHONY: bench-ttt
bench-ttt: $(STAMP)
	nice -n 10 $(PY) benchmarks/bench_ttt.py --out benchmarks/results/ttt_latest.json
