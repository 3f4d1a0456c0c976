# microfactory: python:3.11-slim, a non-root user, data in a volume.
# Stage 1 builds the wheel (migrations and dashboard files ship inside it); stage 2 installs it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY microfactory ./microfactory
COPY drivers ./drivers
COPY migrations ./migrations
COPY web ./web
RUN pip wheel --no-cache-dir --no-deps -w /dist .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MICROFACTORY_DATA_DIR=/data \
    MICROFACTORY_ENVIRONMENT=production \
    MICROFACTORY_HOST=0.0.0.0 \
    MICROFACTORY_PORT=8000

# prusa-slicer and openscad turn designs into G-code; they run as bounded subprocesses.
RUN apt-get update \
 && apt-get install -y --no-install-recommends prusa-slicer openscad \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --user-group microfactory \
 && mkdir -p /data && chown microfactory:microfactory /data

COPY --from=build /dist /dist
RUN pip install /dist/*.whl && rm -rf /dist

USER microfactory
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"

# Migrations first, as their own step; then the server (its own upgrade is then a no-op).
# MICROFACTORY_SECRET_KEY must be given at run time: production refuses the default.
CMD ["sh", "-c", "microfactory db upgrade && exec microfactory serve"]
