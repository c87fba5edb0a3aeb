# One image recipe for every Forge process. From the repository root:
#
#   docker build --build-arg SERVICE=pipeline -t forge-pipeline .      (or: make images)
#
# SERVICE is one of gateway, pipeline, release, deployment, approval, worker. The image runs
# `forge-$SERVICE` (`forge-$SERVICE migrate` applies the database migrations and exits).
#
# The base is pinned by digest so a rebuild gets the same Python and Debian; override it with
# --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> after checking the digest
# with `docker buildx imagetools inspect python:3.11-slim-bookworm`.
#
# Build tools for the steps the worker runs: --build-arg WORKER_PACKAGES="build-essential nodejs"
# (Debian package names) or an image FROM forge-worker that installs them as root and ends with
# USER 10001:10001.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
ARG SERVICE

# --- build: a virtualenv with the service and forge_common, nothing else ----------------------
FROM ${PYTHON_IMAGE} AS build
ARG SERVICE
RUN case "$SERVICE" in gateway|pipeline|release|deployment|approval|worker) ;; \
      *) echo "--build-arg SERVICE=gateway|pipeline|release|deployment|approval|worker" >&2; exit 1 ;; esac
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/forge
# forge_common first: its layer is shared by every service image and survives service changes.
COPY constraints.txt /src/constraints.txt
COPY libs/forge_common /src/libs/forge_common
RUN /opt/forge/bin/pip install --constraint /src/constraints.txt /src/libs/forge_common
COPY services/${SERVICE} /src/services/${SERVICE}
RUN /opt/forge/bin/pip install --constraint /src/constraints.txt /src/services/${SERVICE} \
 && /opt/forge/bin/pip uninstall --yes pip setuptools wheel \
 && ln -s /opt/forge/bin/forge-${SERVICE} /opt/forge/bin/forge-service \
 && /opt/forge/bin/python -m compileall -q /opt/forge/lib

# --- runtime: Python, the virtualenv, a non-root user; no pip, no compiler ---------------------
FROM ${PYTHON_IMAGE} AS runtime
# The base image's own pip and wheel bundles go too: nothing installs at run time.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && rm -rf /usr/local/lib/python3.11/ensurepip /root/.cache \
 && groupadd --system --gid 10001 forge \
 && useradd --system --uid 10001 --gid forge --home-dir /var/lib/forge --create-home --shell /usr/sbin/nologin forge \
 && mkdir -p /var/cache/forge/git && chown -R 10001:10001 /var/cache/forge

# The four domain services and the gateway need nothing more.
FROM runtime AS service-gateway
FROM runtime AS service-pipeline
FROM runtime AS service-release
FROM runtime AS service-deployment
FROM runtime AS service-approval

# The worker runs steps: git to fetch sources, bubblewrap for the step sandbox (it needs
# unprivileged user namespaces on the node), CA certificates for HTTPS, and WORKER_PACKAGES.
FROM runtime AS service-worker
ARG WORKER_PACKAGES=""
RUN apt-get update \
 && apt-get install --yes --no-install-recommends bubblewrap git ca-certificates ${WORKER_PACKAGES} \
 && rm -rf /var/lib/apt/lists/*

# --- the image: the runtime variant of SERVICE plus the virtualenv ------------------------------
# hadolint ignore=DL3006
FROM service-${SERVICE}
ARG SERVICE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="forge-${SERVICE}" \
      org.opencontainers.image.description="Forge CI/CD platform: the ${SERVICE} process" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.vendor="Forge" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
COPY --from=build /opt/forge /opt/forge
ENV PATH=/opt/forge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FORGE_HOST=0.0.0.0 \
    FORGE_PORT=8000 \
    FORGE_WORKER_HTTP_PORT=8000 \
    FORGE_GIT_CACHE_DIR=/var/cache/forge/git \
    FORGE_DATA_DIR=/var/lib/forge
WORKDIR /var/lib/forge
EXPOSE 8000
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["/opt/forge/bin/forge-service"]
