# eochips: `make demo` runs the main job on the embedded real sample; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SAMPLE ?= sample-data
DEMO_OUT ?= demo-output
TEST_WORKERS ?= 2  # pytest-xdist processes for make test (CI: 2 cores; most tests wait on servers and subprocesses)

.PHONY: install sysdeps demo test bench bench-quick bench-all clean

# the runtime only (what `make demo` needs); the test extras come on top for `make test`
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	$(PY) -m compileall -q -j 0 $(VENV)/lib src > /dev/null || true  # PYTHONDONTWRITEBYTECODE machines: no per-process recompiles
	touch $@

# torch for eochips.torch's tests: the CPU build when the machine's wheel source has it (~190 MB, ~25 s);
# never PyPI's default build (CUDA: GBs of nvidia wheels). Without it the torch tests skip with the reason.
TORCH_CPU ?= torch==2.13.0+cpu

$(VENV)/.installed: $(VENV)/.runtime
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q "$(TORCH_CPU)" || echo "note: no CPU torch wheel ($(TORCH_CPU)) here: the torch tests skip"
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

install: $(VENV)/.installed

sysdeps:
	bash scripts/install-system-deps.sh

demo: $(VENV)/.runtime
	$(VENV)/bin/eochips sample-data --output $(SAMPLE)
	rm -rf $(DEMO_OUT)
	EOCHIPS_SAMPLE_DIR=$(SAMPLE) $(VENV)/bin/eochips run demo --output $(DEMO_OUT)
	@echo "dataset: $(DEMO_OUT)/ (index.parquet, chips/, stats.json, checksums.sha256)"

test: install sysdeps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The benchmarks run in their own venv: TorchGeo and rslearn need torchvision, whose PyPI wheels
# only load next to PyPI's (CUDA) torch, so this venv gets the CUDA stack (~6 GB, ~8 min the first
# time); the test venv keeps the small CPU torch.
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q -e ".[test,bench,peers]"
	$(BENCH_PY) -m pip install -q --no-deps "stackstac==0.5.1"  # the Clay seed method; its pandas<3 pin would downgrade pandas
	touch $@

# eochips vs TorchGeo, rslearn, the seed method, odc-stac and the read+warp limit on the crop
# workload (benchmarks/README.md): < 30 min on 2 cores; bench-quick: one round, < 10 min
bench: $(BENCH_VENV)/.installed sysdeps
	$(BENCH_VENV)/bin/eochips sample-data --output $(SAMPLE)
	$(BENCH_PY) benchmarks/run.py

bench-quick: $(BENCH_VENV)/.installed sysdeps
	$(BENCH_VENV)/bin/eochips sample-data --output $(SAMPLE)
	$(BENCH_PY) benchmarks/run.py --quick

# then the Clay datacube (~5 min), cloud-free mosaic (~3 min) and BigEarthNet (~27 min) benchmarks
# (the mosaic's seed method runs gdalwarp: sysdeps)
bench-all: bench
	$(BENCH_PY) benchmarks/clay.py
	$(BENCH_PY) benchmarks/mosaic.py
	$(BENCH_PY) benchmarks/bigearthnet.py

clean:
	rm -rf $(DEMO_OUT) build dist src/*.egg-info .pytest_cache
