# CPU by default; for GPUs build with a CUDA base, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 -t nas-pipeline .
# (a CUDA base needs python3, python3-venv and git installed, as below).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends git python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 nas
WORKDIR /home/nas/project
COPY --chown=nas:nas . .

RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir . \
    && chown -R nas:nas /home/nas/project
ENV PATH=/opt/venv/bin:$PATH \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_HOME=/home/nas/project/.prefect

USER nas
ENTRYPOINT ["nas"]
CMD ["search"]
