# One image for every worker; docker-compose.yml picks the service with `command`.
# The code reads topics.yaml, examples/, dev/kafka/ and schemas/ relative to its
# packages (settings.PROJECT_ROOT), so the project is installed editable from /app,
# laid out as in a checkout: a plain `pip install .` would put the packages in
# site-packages, away from those files.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md topics.yaml ./
COPY examples examples
COPY dev dev
COPY schemas schemas
COPY messaging messaging
COPY orchestrator orchestrator
COPY participants participants
COPY cli cli
COPY bench bench
COPY chaos chaos
RUN pip install --no-cache-dir -e .
ENV SAGA_HOME=/data SAGA_WEB_BIND=0.0.0.0
VOLUME /data
ENTRYPOINT ["saga"]
