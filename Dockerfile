# The gateway as one container running `bot serve`: Slack, MCP over HTTP, health and metrics on
# port 8080, the SQLite ledger on the /data volume (set BOT_DATABASE_URL to PostgreSQL for replicas).
#
#   docker build -t llm-gateway .      # FROM python:3.11-slim
#   scripts/container build            # podman, FROM a Debian bookworm base made locally
#
# Every dependency is installed at the version constraints.txt pins (refresh: scripts/lock).

ARG BASE_IMAGE=python:3.11-slim

# -- build: install the package and its dependencies into a virtualenv ------------------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# strip, for the extension modules of the wheels: their debug symbols are ~35 MB of the image.
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
# The unprivileged user the server runs as, and the folder its ledger lives in (the volume).
RUN groupadd --system --gid 10001 bot \
 && useradd --system --uid 10001 --gid bot --home-dir /data --shell /usr/sbin/nologin bot \
 && mkdir -p /data && chown bot:bot /data
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, in a layer of their own, so editing the code does not reinstall them: the
# requirements are read from pyproject.toml (nothing is built yet), the versions from the pins.
COPY constraints.txt pyproject.toml scripts/requirements.py ./
RUN python requirements.py pyproject.toml >requirements.txt \
 && pip install --no-compile -c constraints.txt -r requirements.txt setuptools
# Then the code, built from a clean tree (.dockerignore keeps any build/ out): the package holds
# exactly the sources copied here. pip and setuptools leave, the extension modules are stripped,
# and byte-code is written for our code and for the modules a server imports (about half of the
# dependencies' files: PYTHONDONTWRITEBYTECODE is set at run time, the rest compile when used).
COPY README.md ./
COPY bot ./bot
COPY tools ./tools
RUN pip install --no-compile --no-deps --no-build-isolation . \
 && pip uninstall -y -q setuptools pip \
 && find /opt/venv -name '*.so*' -type f -exec strip --strip-unneeded {} + \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && python -m compileall -q "$site/bot" "$site/tools" \
 && PYTHONDONTWRITEBYTECODE= python -c "import bot.cli, bot.app, bot.server, tools.mcp_server, \
      bot.slack.app, bot.jobs, openai, anthropic, asyncpg, aiosqlite, sqlalchemy.ext.asyncio, \
      sqlalchemy.dialects.postgresql.asyncpg, sqlalchemy.dialects.sqlite.aiosqlite, slack_bolt.async_app, \
      slack_bolt.adapter.socket_mode.async_handler, slack_sdk.web.async_client, apscheduler, \
      prometheus_client, uvicorn, genai_prices, tiktoken, yaml"

# -- runtime: the virtualenv only, as an unprivileged user ------------------------------------------
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BOT_HOST=0.0.0.0 \
    BOT_PORT=8080 \
    BOT_DATA_DIR=/data \
    BOT_DATABASE_URL=sqlite+aiosqlite:////data/bot.db
# No RUN in this stage: the user, its /data and the virtualenv are made in the build stage and
# copied, so nothing a build step had mounted (a pip configuration) can leave a trace here.
COPY --from=build /etc/passwd /etc/group /etc/shadow /etc/gshadow /etc/
COPY --from=build --chown=10001:10001 /data /data
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
