# Muster gateway image.
#
#   docker build -t muster-gateway:0.1.0 .
#   docker run --rm -p 8080:8080 muster-gateway:0.1.0            # embedded PostgreSQL, local backend
#   docker run --rm muster-gateway:0.1.0 --help
#
# `muster serve` applies the database migrations itself on start, so there is no separate
# migrate step. Settings are MUSTER_* environment variables (see DESIGN.md, "Settings").

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the distribution and its dependencies into a virtual environment ----------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/muster
ENV PATH=/opt/muster/bin:$PATH

WORKDIR /src
COPY . .
RUN pip install .

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# tini is PID 1: it reaps what the gateway does not wait for (with the local backend, a
# supervisor daemon or replica supervisor left behind by an earlier gateway is re-parented to
# PID 1 and would stay a zombie), and forwards SIGTERM to the gateway for a graceful stop.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid (10001), so that Kubernetes' runAsNonRoot can verify it; the
# Deployment's runAsUser matches it.
RUN groupadd --system --gid 10001 muster \
    && useradd --system --uid 10001 --gid muster --home-dir /var/lib/muster \
       --no-create-home --shell /usr/sbin/nologin muster \
    && install -d -o muster -g muster -m 0750 /var/lib/muster

COPY --from=build /opt/muster /opt/muster

ENV PATH=/opt/muster/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/muster \
    MUSTER_HOST=0.0.0.0 \
    MUSTER_PORT=8080 \
    MUSTER_DATA_DIR=/var/lib/muster

USER 10001:10001
WORKDIR /var/lib/muster
EXPOSE 8080

# Liveness of the process. Readiness (/readyz) is checked by compose and Kubernetes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MUSTER_PORT', '8080') + '/healthz', timeout=4)"]

ENTRYPOINT ["tini", "--", "muster"]
CMD ["serve"]
