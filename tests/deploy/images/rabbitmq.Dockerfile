# Test-only broker: Debian bookworm's rabbitmq-server (3.10) with the management plugin, standing in for
# the official rabbitmq:*-management image that docker-compose.yml names (no registry is reachable here).
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* \
 && rabbitmq-plugins enable --offline rabbitmq_management
# As the official image: logs on the console, every file of conf.d read (docker-compose.yml mounts one
# there), RABBITMQ_DEFAULT_USER/PASS from the environment (the server reads them on a new volume).
ENV RABBITMQ_LOGS=- RABBITMQ_CONFIG_FILES=/etc/rabbitmq/conf.d
RUN mkdir -p /etc/rabbitmq/conf.d && chown -R rabbitmq:rabbitmq /etc/rabbitmq /var/lib/rabbitmq
USER rabbitmq
EXPOSE 5672 15672
CMD ["rabbitmq-server"]
