# syntax=docker/dockerfile:1
# Production image: gateway serve as a non-root user, health-checked on the admin /ping.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY gateway ./gateway
# DL3013 asks for pinned versions: this installs the local source tree, whose dependency
# ranges are declared in setup.cfg.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /etc/gateway --shell /usr/sbin/nologin gateway
COPY --from=build /install /usr/local
COPY deploy/image-routes.yaml /etc/gateway/routes.yaml
WORKDIR /etc/gateway
ENV GATEWAY_CONFIG=/etc/gateway/routes.yaml \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 9091
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9091/ping', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["gateway", "serve"]
CMD ["--listen", "0.0.0.0:8080"]
