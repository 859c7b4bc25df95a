# Sluice gateway image: uvicorn (uvloop, httptools) serving gateway.asgi, as an unprivileged user.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY gateway gateway
COPY streaming streaming
COPY accounts accounts
COPY audit audit
COPY templates templates
COPY manage.py ./
# Dependencies from the lock, each checked against its hash (the lock includes the
# dev tools: one lock for every install); then Sluice with the locked setuptools.
RUN pip install --require-hashes -r requirements.lock \
 && pip install --no-deps --no-build-isolation . \
 && useradd --system --uid 10001 --home-dir /app --no-create-home sluice \
 && mkdir -p /app/var && chown sluice /app/var
USER sluice
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["python", "manage.py", "sluice_serve", "--host", "0.0.0.0", "--port", "8000"]
