# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test test-stock lint bench dcmtk browser orthanc ohif haproxy clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,postgres,s3]'
	touch $(STAMP)

## run: install into .venv (with the PostgreSQL and S3 extras, as the image) and start
## `pacs serve` (SQLite + files under ./pacs-data)
run: $(STAMP)
	$(VENV)/bin/pacs serve $(ARGS)

## test: lint, then the whole suite against real DCMTK peers, Orthanc and OHIF (PostgreSQL too
## when PACS_TEST_DATABASE_URL is set, as .ci/run does) on the fast DIMSE transport, then the
## DIMSE suite again on pynetdicom as published (test-stock)
test: $(STAMP) dcmtk browser orthanc ohif haproxy lint
	$(PY) -m pytest $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-stock

## test-stock: the DIMSE tests (tests/dimse, tests/e2e but the browser and Orthanc DICOMweb
## ones) against servers on PACS_DIMSE_TRANSPORT=stock: a pynetdicom release that breaks the
## fast transport shows as fast-only failures; tests of what only the fast transport does are
## skipped with their reason (the fast_transport marker); the in-process tests of either
## transport's code ran in the first pass and are not repeated
STOCK_TESTS ?= tests/dimse tests/e2e --deselect tests/e2e/test_ohif.py \
  --deselect tests/e2e/test_ohif_https.py --deselect tests/e2e/test_orthanc_dicomweb.py \
  --deselect tests/dimse/test_published.py --deselect tests/dimse/test_transport.py \
  --deselect tests/dimse/test_decoding.py --deselect tests/dimse/test_encoding.py \
  --deselect tests/dimse/test_receive_files.py --deselect tests/dimse/test_tls_transport.py
test-stock: $(STAMP) dcmtk
	PACS_DIMSE_TRANSPORT=stock $(PY) -m pytest $(STOCK_TESTS) $(PYTEST_ARGS)

## lint: ruff, mypy --strict, import-linter layer contracts
lint: $(STAMP)
	$(VENV)/bin/ruff check pacs dicomweb storage tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## bench: ingest benchmark against DCMTK storescp, Orthanc and pacs (SQLite, PostgreSQL, stock),
## with C-STORE over DICOM TLS beside plain on one association (TLS / plain, same run) and
## pacs with its blobs in S3 (moto's server on 127.0.0.1) beside files (S3 / files, same run;
## BENCH_ARGS=--no-s3 skips it),
## then the retrieve benchmark (C-MOVE and C-GET of a CT and a small study: pacs on SQLite,
## PostgreSQL and the stock transport beside Orthanc, every file checked byte for byte),
## the query/retrieve benchmark (C-FIND and QIDO-RS at 10k and 100k instances, C-MOVE, C-GET;
## then --million: PostgreSQL indexes of 100k and 1M instances side by side, the queries
## interleaved, 1M / 100k against the 1.5x target; its bulk fills take about 6 minutes here,
## BENCH_QUERY_ARGS=--no-million skips it),
## the DICOMweb benchmark and QIDO-RS with and without a bearer token (bench/auth.py),
## and two replicas behind HAProxy against one on PostgreSQL (bench/replicas.py);
## BENCH_QUERY_ARGS=--orthanc adds Orthanc to the query/retrieve one (its fill takes minutes);
## BENCH_BASELINE=REF also runs pacs from git commit REF, alternated, for an A/B in one run
bench: $(STAMP) dcmtk haproxy
	$(PY) -m bench.ingest --repeat 3 --rss-run 10000 $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE)) $(BENCH_ARGS)
	$(PY) -m bench.retrieve $(BENCH_RETRIEVE_ARGS)
	$(PY) -m bench.query --million $(BENCH_QUERY_ARGS)
	$(PY) -m bench.dicomweb $(BENCH_DICOMWEB_ARGS)
	$(PY) -m bench.auth $(BENCH_AUTH_ARGS)
	$(PY) -m bench.replicas $(BENCH_REPLICAS_ARGS)

## dcmtk: the DCMTK tools the tests talk to (apt-get when missing and root)
dcmtk:
	@command -v storescu >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk; \
	  else echo "DCMTK is missing: install the 'dcmtk' package (apt-get install dcmtk)"; exit 1; fi; }

## browser: Debian's chromium for the UI tests (Playwright drives /usr/bin/chromium; no
## `playwright install`, nothing downloaded at test time); apt-get when missing and root
browser:
	@{ test -x /usr/bin/chromium && test -x /usr/bin/certutil; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium libnss3-tools; \
	  else echo "chromium or certutil is missing: install the 'chromium' and 'libnss3-tools' packages"; exit 1; fi; }

## orthanc: Debian's Orthanc and its DICOMweb plugin, a STOW-RS client the tests push into pacs
## with (apt-get when missing and root). The tests start their own Orthanc on free loopback
## ports with a config in a temp dir, never the Debian service; without root they are skipped.
orthanc:
	@dpkg -s orthanc orthanc-dicomweb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb; \
	  else echo "orthanc, orthanc-dicomweb are missing (apt-get install orthanc orthanc-dicomweb): the Orthanc test will be skipped"; fi; }

## haproxy: the load balancer in front of two replicas in the replica tests, and the checker of
## deploy/haproxy/haproxy.cfg (Debian's package; apt-get when missing and root). The tests start
## their own on free loopback ports with a config in a temp dir, never the Debian service;
## without it they are skipped.
haproxy:
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; \
	  else echo "haproxy is missing (apt-get install haproxy): the replica tests behind it will be skipped"; fi; }

## ohif: the OHIF viewer as published on npm (@ohif/app, the version pinned in
## tests/support/ohif.py): `npm pack` once, its dist/ unpacked into .cache/ohif/; nodejs and
## npm from Debian when missing (apt-get, root). Without npm the OHIF test is skipped.
ohif: $(STAMP)
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	  else echo "npm is missing (apt-get install nodejs npm): the OHIF test will be skipped"; fi; }
	@if command -v npm >/dev/null 2>&1; then $(PY) -m tests.support.ohif; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
