# Every target creates .venv on first use, so a fresh clone needs nothing but `make train` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test train bench experiment preview clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,datasets,dev]'
	touch $(STAMP)

install: $(STAMP)

# One pytest worker per core (at most 4), whole test files per worker: a file's tests share
# its fixtures (the tf.data service of tests/test_distributed.py) and run in order.
test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadfile

train: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m fcndata.train

# Every benchmark, one process each, about 15 minutes on 2 cores; writes benchmarks/RESULTS.md.
bench: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/run_all.py

# FCN §4.4 at equal wall-clock (7 settings x 3 seeds, about 30 minutes on 2 cores); writes experiments/patchwise/.
experiment: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m fcndata.experiments.patchwise --config pipelines/brain_fullimage.yaml

preview: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m fcndata.preview --config pipelines/brain_fullimage.yaml --out preview.png

clean:
	rm -rf $(VENV) runs preview.png
