# The serving image: ONNX Runtime + FastAPI + Pillow, no torch, the bundled model inside.
#
#   docker build -t cifarlab-api .
#   docker run --rm -p 127.0.0.1:8000:8000 cifarlab-api      # then open http://127.0.0.1:8000/ui
#
# scripts/docker-smoke.sh builds, runs and checks it (with podman where there is no Docker
# engine); docs/docker.md has the details.

# --- build: install the package and its serving extra into a venv -------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone (a stub package stands in for src/), so that
# editing the code or the model does not re-download them.
COPY pyproject.toml README.md ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && mkdir -p src/cifarlab && touch src/cifarlab/__init__.py \
 && /opt/venv/bin/pip install ".[serve]" \
 && rm -rf src build
# Then the package itself; the bundled model is package data under src/ (see .dockerignore).
COPY src ./src
RUN /opt/venv/bin/pip install --no-deps --force-reinstall . \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
 && /opt/venv/bin/python -c "import cifarlab.serve.app" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# --- runtime: the venv alone, run by an unprivileged user ---------------------------------
FROM python:3.11-slim
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 cifarlab \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin cifarlab
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER cifarlab
WORKDIR /tmp
EXPOSE 8000
# The slim base has no curl; Python's urllib is enough. /health answers 503 until the model
# is loaded, which urlopen raises on.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["cifarlab", "serve", "--host", "0.0.0.0", "--port", "8000"]
