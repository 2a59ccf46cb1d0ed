# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test lint bench dcmtk browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: install into .venv and start `pacs serve` (SQLite + files under ./pacs-data)
run: $(STAMP)
	$(VENV)/bin/pacs serve $(ARGS)

## test: lint, then the whole suite against real DCMTK peers (PostgreSQL too when
## PACS_TEST_DATABASE_URL is set, as .ci/run does)
test: $(STAMP) dcmtk browser lint
	$(PY) -m pytest $(PYTEST_ARGS)

## lint: ruff, mypy --strict, import-linter layer contracts
lint: $(STAMP)
	$(VENV)/bin/ruff check pacs dicomweb storage tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## bench: ingest benchmark against DCMTK storescp, Orthanc and pacs (SQLite, PostgreSQL),
## then the query/retrieve benchmark (C-FIND at 10k and 100k instances, C-MOVE, C-GET);
## BENCH_QUERY_ARGS=--orthanc adds Orthanc to the latter (filling it takes minutes)
bench: $(STAMP) dcmtk
	$(PY) -m bench.ingest --repeat 3 --rss-run 10000 $(BENCH_ARGS)
	$(PY) -m bench.query $(BENCH_QUERY_ARGS)
	$(PY) -m bench.dicomweb $(BENCH_DICOMWEB_ARGS)

## dcmtk: the DCMTK tools the tests talk to (apt-get when missing and root)
dcmtk:
	@command -v storescu >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk; \
	  else echo "DCMTK is missing: install the 'dcmtk' package (apt-get install dcmtk)"; exit 1; fi; }

## browser: Debian's chromium for the UI tests (Playwright drives /usr/bin/chromium; no
## `playwright install`, nothing downloaded at test time); apt-get when missing and root
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is missing: install the 'chromium' package (apt-get install chromium)"; exit 1; fi; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
