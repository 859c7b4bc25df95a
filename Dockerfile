# Sluice gateway image: uvicorn (uvloop, httptools) serving gateway.asgi.
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
 && pip install --no-deps --no-build-isolation .
EXPOSE 8000
CMD ["python", "manage.py", "sluice_serve", "--host", "0.0.0.0", "--port", "8000"]
