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
RUN pip install ".[collector,agent]" \
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
