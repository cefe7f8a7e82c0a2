# The two commands a new user needs are `make demo` and `make test`; both install first.
PYTHON ?= python3
PIP    ?= $(PYTHON) -m pip
TORCH  ?= "torch>=2.4" "torchvision>=0.19"

.PHONY: install demo test test-fast bench clean

install:
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev]"

demo: install
	tailor splits data/styles.csv experiments/splits --images data/sample/images
	tailor run -c configs/demo.gin

test: install
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

bench: install
	$(PYTHON) bench/transfer.py

clean:
	rm -rf experiments .pytest_cache build *.egg-info
