# Multi-stage: build a wheel with its dependencies, run as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY authz ./authz
COPY holds ./holds
COPY policies ./policies
COPY clearing ./clearing
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /app holdfast
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER holdfast
ENV HOLDFAST_HOST=0.0.0.0 HOLDFAST_PORT=8080 HOLDFAST_ENV=production
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=1)" || exit 1
CMD ["holdfast", "serve"]
