# One image for every worker; docker-compose.yml picks the service with `command`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY messaging messaging
COPY orchestrator orchestrator
COPY participants participants
COPY cli cli
COPY bench bench
COPY topics.yaml ./
RUN pip install --no-cache-dir .
ENV SAGA_HOME=/data SAGA_WEB_BIND=0.0.0.0
VOLUME /data
ENTRYPOINT ["saga"]
