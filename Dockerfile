# syntax=docker/dockerfile:1
# The gateway as one container running `bot serve`: Slack, MCP over HTTP, health and metrics on
# port 8080, the SQLite ledger on the /data volume (set BOT_DATABASE_URL to PostgreSQL for replicas).

# -- build: install the package and its dependencies into a virtualenv ------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so editing the code does not reinstall them: a stub package with the real
# pyproject.toml resolves and installs every dependency in a layer of its own.
COPY pyproject.toml README.md ./
RUN mkdir -p bot tools && touch bot/__init__.py tools/__init__.py \
 && pip install . \
 && pip uninstall -y budget-guarded-llm-gateway
COPY bot ./bot
COPY tools ./tools
RUN pip install --no-deps . && python -c "import bot.server, tools.mcp_server"

# -- runtime: the virtualenv only, as an unprivileged user ------------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BOT_HOST=0.0.0.0 \
    BOT_PORT=8080 \
    BOT_DATA_DIR=/data \
    BOT_DATABASE_URL=sqlite+aiosqlite:////data/bot.db
RUN groupadd --system --gid 10001 bot \
 && useradd --system --uid 10001 --gid bot --home-dir /data --shell /usr/sbin/nologin bot \
 && mkdir -p /data && chown bot:bot /data
COPY --from=build /opt/venv /opt/venv
COPY config/config.yaml.example /etc/bot/config.yaml.example
USER bot
WORKDIR /data
VOLUME /data
EXPOSE 8080
# Liveness only: /readyz also fails while draining or while the database is down, and neither
# must restart us.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BOT_PORT', '8080'), timeout=4)"]
# Exec form: `bot` is PID 1 and receives SIGTERM itself, so `docker stop` drains calls in flight
# (give it --stop-timeout 40 or more: the drain waits up to BOT_SHUTDOWN_GRACE, 30 s by default).
STOPSIGNAL SIGTERM
CMD ["bot", "serve"]
