# Multi-stage: build wheels of Holdfast and all its dependencies, then install them offline into a
# slim image that runs as a non-root user. deploy/docker-compose.yml shows it in use.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY authz ./authz
COPY holds ./holds
COPY policies ./policies
COPY clearing ./clearing
# the dependencies at the versions constraints.txt pins, as `make install` installs them
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint constraints.txt .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --user-group --uid 10001 --home-dir /app --no-create-home holdfast
WORKDIR /app
COPY --from=build /wheels /wheels
# --no-index: only what the build stage resolved, nothing fetched at this step
RUN pip install --no-cache-dir --no-index --find-links=/wheels holdfast && rm -rf /wheels
USER 10001:10001
# production refuses development secrets: HOLDFAST_WEBHOOK_SECRET (and admin tokens) must be set
ENV HOLDFAST_HOST=0.0.0.0 HOLDFAST_PORT=8080 HOLDFAST_ENV=production
# 8080 API and server metrics; 9108 `holdfast consumers` metrics; 9110+ per-worker metrics
EXPOSE 8080 9108
STOPSIGNAL SIGTERM
# exec form (no shell needed); python exits non-zero when /healthz does not answer 200
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HOLDFAST_PORT', '8080'), timeout=2)"]
CMD ["holdfast", "serve"]
