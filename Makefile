# recis: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
# Override for your own torch build, e.g. TORCH_SPEC="torch==2.13.0" with a CUDA index.
TORCH_SPEC ?= torch==2.13.0
FBGEMM_SPEC ?= fbgemm-gpu-cpu==1.8.0
TORCHREC_SPEC ?= torchrec==1.8.0
TORCHREC_DEPS ?= pyre-extensions tensordict torchmetrics tqdm
CSRC := $(shell find csrc -name '*.cc' -o -name '*.h' -o -name '*.cpp' -o -name '*.cu' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: install build demo demo-dist test test-fast bench clean

install: $(VENV)/.recis-built $(VENV)/.plugins-registered

# Dependencies, in the order that keeps pip from pulling a CUDA torch or GPU fbgemm.
$(VENV)/.deps-installed: requirements.txt Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q $(FBGEMM_SPEC)
	$(PIP) install -q --no-deps $(TORCHREC_SPEC)
	$(PIP) install -q $(TORCHREC_DEPS)
	touch $@

# Registers the checkout in the venv (editable, without building: the next rule builds).
$(VENV)/.recis-registered: $(VENV)/.deps-installed setup.py
	RECIS_NO_EXT=1 $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

# Plugin families under plugins/ (each its own package, registered through entry points).
PLUGINS := plugins/relevance plugins/multimodal plugins/online
$(VENV)/.plugins-registered: $(VENV)/.recis-registered $(addsuffix /pyproject.toml,$(PLUGINS))
	for p in $(PLUGINS); do $(PIP) install -q --no-build-isolation --no-deps -e $$p || exit 1; done
	touch $@

# Incremental (ninja) rebuild of recis._C in place whenever a C++ source changes.
$(VENV)/.recis-built: $(VENV)/.recis-registered $(CSRC)
	MAX_JOBS=2 $(VPY) setup.py -q build_ext --inplace
	touch $@

build: install

# Gets MovieLens-1M, trains DeepFM on the CPU and prints test AUC, GAUC, logloss and examples/s.
demo: install
	$(VPY) -m recis train examples/movielens_deepfm.yaml --json runs/movielens_deepfm/result.json

# The same job on 2 CPU ranks (torchrun, gloo): tables sharded over the ranks, dense parameters in DDP.
demo-dist: install
	$(VENV)/bin/torchrun --nproc-per-node 2 -m recis train examples/movielens_deepfm.yaml --log-dir runs/movielens_deepfm_dist --json runs/movielens_deepfm_dist/result.json

test: install
	$(VPY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(VPY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(VPY) benchmarks/embedding_step.py

clean:
	rm -rf build recis/_C*.so *.egg-info
