# syntax=docker/dockerfile:1
# ollama-proxy in a container (docs/operations.md, "Container"):
#
#   docker build -t ollama-proxy .
#   docker run -p 11434:11434 -e OLLAMA_PROXY_BACKEND=http://gpu1:8000/v1 -e OPENAI_API_KEY ollama-proxy
#   docker run -p 11434:11434 ollama-proxy --backend http://gpu1:8000/v1 --workers 2
#
# Arguments after the image name are ollamaproxy options; every option can also be an OLLAMA_PROXY_*
# variable.  Inside the container the daemon listens on 0.0.0.0:11434.

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: a venv with the package and its runtime dependencies, nothing else --------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ollama_proxy ./ollama_proxy
COPY twisted ./twisted
RUN python -m venv /opt/ollama-proxy \
 && /opt/ollama-proxy/bin/pip install . \
 && /opt/ollama-proxy/bin/pip uninstall --yes pip setuptools \
 # Twisted's own test suites: a third of the venv, never imported by the daemon.
 && find /opt/ollama-proxy -depth -type d -name test -path "*/twisted/*" -exec rm -rf {} +

# -- run: the slim Python image, the venv, an unprivileged user -----------------------------------------
FROM ${PYTHON_IMAGE} AS run
ENV PATH=/opt/ollama-proxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/ollama-proxy /opt/ollama-proxy
# Twisted's plugin cache (dropin.cache), written now by the venv's owner: the unprivileged user could not
# write it, and every start would then rescan the plugins and log that the cache is not writable.
RUN python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && find /opt/ollama-proxy -name dropin.cache | grep -q . \
 && groupadd --system --gid 10001 ollama-proxy \
 && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin ollama-proxy
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
WORKDIR /tmp
EXPOSE 11434
# Liveness from inside the container, with the Python already there (the slim image has no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:11434/health', timeout=4).status != 200)"]
# SIGTERM drains in-flight requests for drain-timeout (30 s): give `docker stop` a --time above that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "ollamaproxy", "--listen", "tcp:11434:interface=0.0.0.0:backlog=1024"]
CMD []
