# syntax=docker/dockerfile:1
# pd-autoscaler controller image: `pd-autoscaler run` as a non-root user.
#
# Two stages. The first builds a wheel from the build context (a clean tree: .dockerignore
# admits only pyproject.toml, README.md, constraints.txt and autoscaler/, never a build/ or
# *.egg-info left by an in-tree build, whose stale copies once shipped an empty package) and
# installs it into a virtualenv with the pinned versions of constraints.txt, without the `sim`
# extra (matplotlib, rich: the controller never imports them). The second copies only that venv
# onto a fresh slim base: no pip cache, compiler, wheel or build metadata reaches the image.
# tests/unit/test_wheel_install.py does the first stage's steps without a container engine and
# runs the result. The base is pinned by version (bump deliberately; pin the digest too in your
# registry mirror).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md constraints.txt ./
COPY autoscaler ./autoscaler
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt /wheels/pd_autoscaler-*.whl \
    && /opt/venv/bin/pd-autoscaler --version \
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
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["pd-autoscaler"]
CMD ["run"]
