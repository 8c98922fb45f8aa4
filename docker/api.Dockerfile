# API image: serves the REST API and runs packed models. No torch in here.
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
RUN pip install --no-cache-dir .
ENV BITFACTOR_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
CMD ["bitfactor", "info"]
