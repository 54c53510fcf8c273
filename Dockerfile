# One image for the gateway, the migrations and the Celery workers.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 PALISADE_DATA_DIR=/data
WORKDIR /app
# pg_dump/pg_restore for `palisade backup` / `palisade restore`; their major version must be >= the server's
# (compose runs Postgres 16), so they come from the PostgreSQL project's Debian repository
ARG PG_MAJOR=16
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-common ca-certificates \
 && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
 && apt-get install -y --no-install-recommends postgresql-client-${PG_MAJOR} && rm -rf /var/lib/apt/lists/*
# Every dependency exactly as locked, each wheel checked against its hashes (torch: the CPU build 2.13.0+cpu from
# the PyTorch CPU index). GPU hosts: --build-arg TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128 replaces
# torch with the CUDA build of the same version and its CUDA libraries (those wheels are then not hash-pinned).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=
COPY requirements.lock requirements-nodeps.lock ./
RUN pip install --require-hashes --no-deps --extra-index-url ${TORCH_INDEX} -r requirements.lock \
 && pip install --require-hashes --no-deps -r requirements-nodeps.lock \
 && if [ -n "${TORCH_CUDA_INDEX}" ]; then \
      pip uninstall -y torch && pip install torch==2.13.0 --index-url "${TORCH_CUDA_INDEX}"; fi
COPY pyproject.toml README.md alembic.ini ./
COPY gateway ./gateway
COPY trainer ./trainer
COPY alembic ./alembic
COPY policies ./policies
RUN pip install --no-deps --no-build-isolation -e .
RUN useradd --system --uid 10001 palisade && mkdir -p /data && chown palisade /data
USER palisade
EXPOSE 8000
CMD ["palisade", "serve", "--host", "0.0.0.0", "--port", "8000"]
