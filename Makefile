# `make demo` / `make test` set up .venv (idempotently) and run the main job / the test suite;
# `make test-slow` runs the long end-to-end tests (benchmark and demo quick runs) that `make test` leaves out;
# `make docs` builds the documentation site into site/.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DS_STAMP := $(VENV)/.installed-deepspeed
DEMO_DIR ?= demo_output
# pytest-xdist workers: test files run side by side (one torch thread each), two for the 2-core CI machine
TEST_WORKERS ?= 2

.PHONY: venv demo test test-slow lint format docs clean

$(STAMP): setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: any other spec (or letting a dependency pull it in) downloads a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# DeepSpeed, for the tests that run it on CPU processes (not needed to train: `make demo` leaves it out). --no-deps
# keeps torch as it is; its one op is built with ninja at first use.
$(DS_STAMP): $(STAMP)
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --no-deps deepspeed==0.19.8 einops hjson msgpack ninja py-cpuinfo
	touch $(DS_STAMP)

venv: $(STAMP)

demo: venv
	$(PY) examples/demo.py --output_dir $(DEMO_DIR)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint $(DS_STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-slow: venv $(DS_STAMP)
	$(PY) -m pytest -m slow -n $(TEST_WORKERS) --dist loadfile

docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(DEMO_DIR) build site *.egg-info
