# For platforms that build containers (Fly, Render, Railway, Dokku with a Dockerfile).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    STORE_URL=sqlite:////data/agentbot.sqlite3

WORKDIR /app
COPY pyproject.toml README.md ./
COPY agentbot ./agentbot
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 agentbot \
    && mkdir -p /data && chown agentbot /data

USER agentbot
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"
CMD ["python", "-m", "agentbot"]
