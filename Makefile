# The two commands a new user needs are `make demo` and `make test`; both install first.
PYTHON ?= python3
PIP    ?= $(PYTHON) -m pip
TORCH  ?= "torch>=2.4" "torchvision>=0.19"

.PHONY: install browser demo test test-fast docs bench clean

install:
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev]"

# The browser test drives Debian's Chromium (no downloaded browser builds); installed when missing.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (the browser test needs them)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "the browser test needs chromium and chromium-driver: sudo apt-get install chromium chromium-driver"; fi

demo: install
	tailor splits data/styles.csv experiments/splits --images data/sample/images
	tailor run -c configs/demo.gin

# the example notebook runs too (nbmake: each notebook is one more pytest item, in the same report), and
# tests/test_docs.py builds the documentation site as `make docs` does (strict, offline)
test: install browser
	$(PYTHON) -m pytest -q tests examples --nbmake --nbmake-timeout=900

# the documentation site into site/: strict, offline (no fonts or scripts from a CDN); generated pages from the code
docs:
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(PYTHON) -m mkdocs build --strict --quiet

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

bench: install
	$(PYTHON) bench/transfer.py

clean:
	rm -rf experiments .pytest_cache build site *.egg-info
