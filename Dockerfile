# syntax=docker/dockerfile:1
# pd-autoscaler controller image: `pd-autoscaler run` as a non-root user.
#
# Two stages: the first builds a virtualenv (pip, wheels, metadata), the second copies only that
# venv onto a fresh slim base, so no pip cache, compiler or build metadata reaches the image.
# The base is pinned by version (bump deliberately; pin the digest too in your registry mirror).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first (only pyproject.toml), so code edits do not re-download them.
COPY pyproject.toml README.md ./
RUN mkdir autoscaler && touch autoscaler/__init__.py \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip uninstall --yes pd-autoscaler
COPY autoscaler ./autoscaler
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="pd-autoscaler" \
      org.opencontainers.image.description="Autoscaler for prefill/decode vLLM Deployments" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid, so `runAsNonRoot: true` can verify it without a passwd lookup.
RUN groupadd --system --gid 65532 autoscaler \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin autoscaler
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["pd-autoscaler"]
CMD ["run"]
