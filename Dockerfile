# pipedrive-scope-proxy: slim image, non-root, config mounted at /etc/pipedrive-scope-proxy.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIPEDRIVE_SCOPE_PROXY_CONFIG=/etc/pipedrive-scope-proxy/proxy.yaml

WORKDIR /opt/pipedrive-scope-proxy
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install '.[fast]' \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin proxy
COPY config/proxy.yaml /etc/pipedrive-scope-proxy/proxy.yaml

USER proxy
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/_proxy/health', timeout=2)"]
ENTRYPOINT ["pipedrive-scope-proxy"]
CMD ["serve"]
