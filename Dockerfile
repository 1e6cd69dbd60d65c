# The service alone: SQLite lives on the /data volume; Twilio, SQS and API keys come from the env.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --home-dir /app verify \
    && mkdir -p /data && chown verify /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY notifier ./notifier
COPY config.toml ./config.toml
RUN pip install . && rm -rf build

USER verify
ENV VERIFY_SERVER_HOST=0.0.0.0 \
    VERIFY_DATABASE_PATH=/data/verifications.db
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]

# SIGTERM stops it within server.shutdown_grace_seconds (5 s) plus about 1 s, inside docker
# stop's 10 s before SIGKILL; pending verifications resume from /data on the next start.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service", "--config", "/app/config.toml"]
