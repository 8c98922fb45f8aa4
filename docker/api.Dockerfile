# API image: the REST API (/v1, /v2) and packed-model inference through runtime/.
# No torch in here: uploads are format-checked (bitfactor.modelformat) and the worker
# imports them fully; predict runs on the C runtime with numpy only.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY bitfactor bitfactor
COPY api api
COPY db db
COPY runtime runtime
COPY worker worker
COPY engine engine
RUN pip install --no-cache-dir . \
    && python -c "import sys, api.app; assert 'torch' not in sys.modules"
RUN useradd --create-home --uid 10001 bitfactor && mkdir /data && chown bitfactor /data
USER bitfactor
ENV BITFACTOR_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import httpx; httpx.get('http://127.0.0.1:8000/v2/health/ready').raise_for_status()"
# Applies migrations, writes /data/api-key on first start, serves; workers run elsewhere.
CMD ["bitfactor", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
