# Worker image: trains jobs on a GPU. torch 2.13.0 with CUDA comes from the PyTorch wheel
# index (the CUDA libraries ship as wheels; the host needs only the NVIDIA driver and the
# container toolkit). CPU-only hosts can run it too: jobs fall back to the CPU.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
COPY pyproject.toml setup.py README.md ./
COPY bitfactor bitfactor
COPY api api
COPY db db
COPY runtime runtime
COPY worker worker
COPY engine engine
RUN pip install --no-cache-dir '.[engine]'
RUN useradd --create-home --uid 10001 bitfactor && mkdir /data && chown bitfactor /data
USER bitfactor
ENV BITFACTOR_DATA_DIR=/data
VOLUME /data
# One job at a time, a fresh child process per job (GPU memory is returned after each).
CMD ["bitfactor", "worker", "--queues", "gpu"]
