# Test-only base: Debian bookworm's own Python 3.11 (no registry is reachable here for the official
# image). Built on the Debian image worker/devtools/containers.py makes with debootstrap. apt's caches
# are cleaned, as the official image's docker-clean does.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
# The host's CA certificates: the package proxy of this machine re-signs TLS, and pip in the image
# build must trust it. Only these test images carry them; the shipped Dockerfile adds none.
COPY certs/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && update-ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
