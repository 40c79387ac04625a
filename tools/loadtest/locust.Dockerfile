# Locust for the chapters' cluster runs (make loadtest-k8s*): one image for the driver (the demo,
# Locust's master, in one pod) and Locust's workers (pods of their own). It holds the project's
# locustfiles, demo, ledger and report (loadtest/), the overload settings (config/), Locust from
# wheels the host downloaded (no registry needed in the build), and kubectl for the policy
# switches. scripts/load-image.sh builds it, on the local debootstrap base when this one cannot
# be pulled.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# The versions are bookworm's current ones.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt wheels/ /tmp/wheels/
RUN python3 -m venv /opt/locust \
    && /opt/locust/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels -r /tmp/wheels/requirements.txt \
    && rm -rf /tmp/wheels
COPY kubectl /usr/local/bin/kubectl
COPY app/ /app/
ENV PATH=/opt/locust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
# The restricted Pod Security profile's non-root user, as the app image's.
USER 65532:65532
WORKDIR /app
ENTRYPOINT ["locust"]
