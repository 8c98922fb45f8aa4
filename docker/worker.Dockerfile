# Worker image: trains on a GPU. CUDA torch comes from the pytorch base image.
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime
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
RUN pip install --no-cache-dir . tensorly onnx onnxruntime
ENV BITFACTOR_DATA_DIR=/data
VOLUME /data
CMD ["bitfactor", "info"]
