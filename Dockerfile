# One image, two targets: `agent` (traintrail-agent run) and `collector`
# (traintrail collector run, the default target).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the package needs (README* may be absent: the wildcard tolerates it).
COPY pyproject.toml README* ./
COPY schemas ./schemas
COPY agent ./agent
COPY collector ./collector
# gcc builds the agent's C Avro writer (schemas/_avrowrite.c) and C producer
# (agent/_kafkacore.c) and leaves again; without it the install still succeeds
# and the agent encodes and produces in Python, several times slower per event.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && pip install ".[collector,agent]" \
 && apt-get purge -y --auto-remove gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/traintrail traintrail \
 && mkdir -p /run/traintrail /var/lib/traintrail \
 && chown traintrail:traintrail /run/traintrail /var/lib/traintrail
# Named volumes mounted on these dirs inherit their ownership.
USER traintrail
WORKDIR /var/lib/traintrail

FROM base AS agent
ENTRYPOINT ["traintrail-agent", "run"]

FROM base AS collector
ENTRYPOINT ["traintrail", "collector", "run"]
