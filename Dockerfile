# syntax=docker/dockerfile:1
#
# One image for every Switchboard process. The entrypoint is the `switchboard` command and the
# first argument picks what runs:
#
#   docker run IMAGE agent | upload | edge | migrate | token ...
#
# Build and push: see docs/kubernetes.md ("Build and push the image"). There is no container engine
# on the project's CI machines, so this file is linted statically by tests/k8s/test_dockerfile.py
# (pinned bases, non-root user, entrypoint, nothing to build with in the final stage) and its build
# stage is rehearsed there by building the wheel from exactly the files .dockerignore lets through.

# --------------------------------------------------------------------------- base
# The one base image of both stages: an exact Python patch release on Debian 12, the Debian that
# CI runs. Docker rebuilds tags for OS fixes; to pin the exact bytes, append the digest you have
# reviewed (docs/kubernetes.md): FROM python:3.11.14-slim-bookworm@sha256:<digest> AS base
FROM python:3.11.14-slim-bookworm AS base

# --------------------------------------------------------------------------- build
FROM base AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The dependencies are published as manylinux wheels for CPython 3.11: nothing is compiled, even here.
# The virtual environment has no pip of its own: the base image's pip installs into it (--python),
# so the final image gets the application and its dependencies and nothing that installs more.
RUN python -m venv --without-pip /opt/switchboard
COPY pyproject.toml README.md ./
COPY services ./services
COPY switchboard ./switchboard
RUN python -m pip --python /opt/switchboard/bin/python install --no-compile . \
 && /opt/switchboard/bin/python -m compileall -q -j 0 /opt/switchboard/lib

# --------------------------------------------------------------------------- runtime
FROM base AS runtime
LABEL org.opencontainers.image.title="switchboard" \
      org.opencontainers.image.description="Self-hosted ChatKit backend: edge, agent and upload services" \
      org.opencontainers.image.licenses="Apache-2.0"
# No bytecode writes at run time (the root filesystem is read-only in Kubernetes; the build stage
# compiled everything), unbuffered logs, and the data directory the agent service uses for its
# sample ERP database (an emptyDir in Kubernetes).
ENV PATH=/opt/switchboard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SWITCHBOARD_DATA_DIR=/var/lib/switchboard
# The base image's own installers go: nothing in the running image can fetch or build packages.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && groupadd --system --gid 10001 switchboard \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin switchboard \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/switchboard
COPY --from=build /opt/switchboard /opt/switchboard
WORKDIR /var/lib/switchboard
# edge HTTP, agent gRPC, upload gRPC (the defaults of services/common/config.py's listen settings)
EXPOSE 8080 50051 50052
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["switchboard"]
CMD ["--help"]
