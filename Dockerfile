# Sluice gateway image: uvicorn (uvloop, httptools) serving gateway.asgi.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY streaming streaming
COPY accounts accounts
COPY audit audit
COPY templates templates
COPY manage.py ./
RUN pip install .
EXPOSE 8000
CMD ["python", "manage.py", "sluice_serve", "--host", "0.0.0.0", "--port", "8000"]
