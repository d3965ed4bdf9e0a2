# Every target creates .venv on first use, so a fresh clone needs nothing but `make train` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test train bench bench-peers experiment panel preview clean

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

# fcndata next to MONAI and TorchIO on six patch workloads, 5 rounds (about 12 minutes on 2 cores, the
# venv included); writes benchmarks/PEERS.md. The peers live in their own venv, .venv-peers.
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed

$(PEERS_STAMP): benchmarks/peers-requirements.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet torch==2.13.0   # pinned: the CPU wheel, not the CUDA build
	$(PEERS_VENV)/bin/python -m pip install --quiet -r benchmarks/peers-requirements.txt
	touch $(PEERS_STAMP)

bench-peers: $(STAMP) $(PEERS_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/peers.py --peers-python $(PEERS_VENV)/bin/python

# FCN §4.4 at equal wall-clock (7 settings x 3 seeds, about 30 minutes on 2 cores); writes experiments/patchwise/;
# then the panel (below, about 45 minutes).
experiment: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m fcndata.experiments.patchwise --config pipelines/brain_fullimage.yaml
	$(MAKE) panel

# The plan vs a plain U-Net at equal wall-clock on brain, digits, shapes, scenes and phantom (2 arms x 3 seeds
# each, about 45 minutes on 2 cores); writes experiments/panel/.
panel: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m fcndata.experiments.panel --out experiments/panel

preview: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m fcndata.preview --config pipelines/brain_fullimage.yaml --out preview.png

clean:
	rm -rf $(VENV) $(PEERS_VENV) runs preview.png
