# syntax=docker/dockerfile:1
# The pacs image: `pacs serve` with the PostgreSQL driver and the S3 client (pacs[postgres,s3]),
# as a non-root user, everything installed at build time (the image has no pip). Built by
# `docker compose build` and by skaffold (deploy/k8s); not built in CI (no Docker engine).
#   docker build -t pacs .
#   docker run -p 11112:11112 -p 8042:8042 -v pacs-data:/data pacs     # files + SQLite in /data
# The first admin token, printed once:
#   docker exec CONTAINER pacs token create --name admin --role admin

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pacs pacs
COPY dicomweb dicomweb
COPY storage storage
# binary wheels only: a missing wheel fails the build here rather than compiling in the image
RUN python -m venv /opt/pacs \
 && /opt/pacs/bin/pip install --no-cache-dir --only-binary=:all: ".[postgres,s3]" \
 && /opt/pacs/bin/pip uninstall --yes --quiet pip setuptools

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 pacs \
 && useradd --system --uid 10001 --gid pacs --home-dir /data --no-create-home pacs \
 && mkdir /data && chown pacs:pacs /data
COPY --from=build /opt/pacs /opt/pacs
# Reachable from the network, so HTTP clients authenticate (pacs serve refuses --auth none on a
# non-loopback address) and DIMSE admits the AEs of the registry (--dimse-access registered).
ENV PATH=/opt/pacs/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PACS_DATA_DIR=/data \
    PACS_AUTH=required \
    PACS_DIMSE_HOST=0.0.0.0 \
    PACS_HTTP_HOST=0.0.0.0
USER 10001:10001
WORKDIR /data
EXPOSE 11112 8042
# Ready: the index answers, the blob store is writable, the listeners accept (GET /readyz).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-c", "\
import os, ssl, urllib.request; \
tls = bool(os.environ.get('PACS_TLS_CERT')); \
url = ('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('PACS_HTTP_PORT', '8042'); \
urllib.request.urlopen(url + '/readyz', timeout=4, context=ssl._create_unverified_context() if tls else None)"]
ENTRYPOINT ["pacs"]
CMD ["serve"]
