# pipedrive-scope-proxy: a slim image that runs as a non-root user, config mounted at
# /etc/pipedrive-scope-proxy/proxy.yaml. Build: docker build -t pipedrive-scope-proxy .
# The base image is a build argument, for registry mirrors: --build-arg PYTHON_IMAGE=...
ARG PYTHON_IMAGE=python:3.11-slim

# Stage 1: the proxy and its dependencies in a virtual environment, built from this checkout.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python3 -m venv /opt/pipedrive-scope-proxy \
    && /opt/pipedrive-scope-proxy/bin/pip install --no-cache-dir '.[fast]' \
    && /opt/pipedrive-scope-proxy/bin/pip uninstall --yes pip setuptools wheel

# Stage 2: only that environment and the default config; no compilers, caches or sources.
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/pipedrive-scope-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIPEDRIVE_SCOPE_PROXY_CONFIG=/etc/pipedrive-scope-proxy/proxy.yaml
# uid 10001 and the name scope-proxy: Debian's base system already has a user called proxy (13).
# /var/lib/pipedrive-scope-proxy: the user's own, for store: sqlite:///var/lib/.../tokens.db
# (mount a volume there to keep learned tokens across restarts).
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin scope-proxy \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/pipedrive-scope-proxy
COPY --from=build /opt/pipedrive-scope-proxy /opt/pipedrive-scope-proxy
COPY config/proxy.yaml /etc/pipedrive-scope-proxy/proxy.yaml

USER 10001:10001
# The default config's port; a config with admin_listen (e.g. 9901) serves /_proxy/* there.
EXPOSE 8080
STOPSIGNAL SIGTERM
# Reads the same config as the server: the main port, or admin_listen's when it is set.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["pipedrive-scope-proxy", "health"]
# The proxy is PID 1: SIGTERM and SIGINT drain in-flight calls, SIGHUP reloads the config.
ENTRYPOINT ["pipedrive-scope-proxy"]
CMD ["serve"]
