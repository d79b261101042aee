# BASE_IMAGE (build argument): a Debian or Ubuntu image; python3 and venv are installed when it lacks them.
#   CPU (default):  docker build -t nas-pipeline .
#   CUDA:           docker build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 -t nas-pipeline-cuda .
#                   docker run --rm --gpus all nas-pipeline-cuda search --device cuda
# The package is installed from pyproject.toml (`pip install .`); the container runs as the non-root user
# nas (uid 10001: Ubuntu 24.04 images already have a user 1000) in /home/nas/project; `nas` is the entrypoint.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Versions are not pinned: the base image is a build argument (Debian or Ubuntu), each with its own versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && if ! python3 -m venv /opt/venv >/dev/null 2>&1; then \
        rm -rf /opt/venv \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && python3 -m venv /opt/venv; \
    fi \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 nas && useradd --no-log-init --create-home --uid 10001 --gid nas nas
WORKDIR /home/nas/project
COPY --chown=nas:nas . .

# outputs/ exists in the image so that a named volume mounted there starts owned by nas
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && mkdir -p outputs \
    && chown -R nas:nas /home/nas/project
ENV PATH=/opt/venv/bin:$PATH \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_HOME=/home/nas/project/.prefect

USER 10001:10001
ENTRYPOINT ["nas"]
CMD ["search"]
