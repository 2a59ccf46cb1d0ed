# A production-like image of pacs serve (not built in CI: no Docker engine there).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pacs pacs
COPY dicomweb dicomweb
COPY storage storage
RUN pip install --no-cache-dir .
EXPOSE 11112 8042
# Reachable from the network, so HTTP clients authenticate (pacs serve refuses --auth none on a
# non-loopback address). The first admin token, printed once:
#   docker exec CONTAINER pacs token create --name admin --role admin
ENV PACS_DATA_DIR=/data PACS_AUTH=required
ENTRYPOINT ["pacs", "serve", "--data-dir", "/data", "--dimse-host", "0.0.0.0", "--http-host", "0.0.0.0"]
