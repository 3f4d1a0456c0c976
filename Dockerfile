# microfactory: python:3.11-slim, a non-root user, data in a volume.
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

WORKDIR /app
COPY pyproject.toml README.md ./
COPY microfactory ./microfactory
COPY drivers ./drivers
COPY migrations ./migrations
COPY web ./web
# Editable install: migrations/ and web/ are found beside the package.
RUN pip install -e . && chown -R root:root /app

USER microfactory
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"

# Migrations first, as their own step; then the server (its own upgrade is then a no-op).
# MICROFACTORY_SECRET_KEY must be given at run time: production refuses the default.
CMD ["sh", "-c", "microfactory db upgrade && exec microfactory serve"]
