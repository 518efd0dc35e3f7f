# For platforms that build containers (Fly, Render, Railway, Dokku with a Dockerfile).
FROM python:3.11-slim

# No STORE_URL here: it would shadow a platform's REDIS_URL. The default sqlite:///agentbot.sqlite3 is
# relative to the working directory, /data (the volume).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY agentbot ./agentbot
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 agentbot \
    && mkdir -p /data && chown agentbot /data

USER agentbot
# /data is where a volume goes (`docker run -v agentbot-data:/data`, fly.toml's mount). No VOLUME instruction:
# Railway refuses to build an image with one (it has its own volumes), and a named volume needs none.
WORKDIR /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"
CMD ["python", "-m", "agentbot"]
