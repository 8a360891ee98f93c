# midas-onnx: MiDaS small depth heatmaps over HTTP, torch-free at run time.
#
#   docker build -t midas-onnx .
#   docker run -p 8000:8000 -e MIDAS_ONNX_API_KEY_FILE=/run/secrets/midas-onnx-keys \
#     -v "$PWD/keys.txt:/run/secrets/midas-onnx-keys:ro" midas-onnx
#
# The model is exported (CPU PyTorch) and quantized to INT8 while the image builds; the image
# that runs holds Python, the runtime, the EXTRAS and the INT8 model, never torch.
# Build arguments (--build-arg NAME=VALUE):
#   BASE         a Debian bookworm image with Python 3.11 and its venv module
#   EXTRAS       extras installed in the image: serve (default), or serve,ray for Ray workers
#   TORCH_INDEX  where the export stage gets torch (the CPU builds; PyPI's carry CUDA)
# Named build contexts (--build-context NAME=DIR) replace a stage:
#   checkpoint=DIR   a folder holding midas_v21_small_256.pt (offline; else export downloads it)
#   export=DIR       a folder holding models/midas_small.onnx, exported (skips the PyTorch stages)
#   calibration=DIR  photos like yours to calibrate INT8 on (else the built-in photos)
# Podman: add --format docker, or the OCI format drops HEALTHCHECK.

ARG BASE=python:3.11-slim-bookworm
ARG EXTRAS=serve

# The environment every stage shares; the venv at /opt/venv has the same paths on
# python:3.11-slim and on a Debian python3 base.
FROM ${BASE} AS python
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# The build stages' venv, with binutils for strip; the image that runs copies /opt/venv alone.
FROM python AS venv
RUN apt-get update && apt-get install --yes --no-install-recommends binutils && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# Requirement lists read from pyproject.toml, so that dependency layers are rebuilt only when
# it changes, not on every code change: core (the base install), extras (EXTRAS), quantize, export.
FROM venv AS requirements
ARG EXTRAS
COPY pyproject.toml /src/
RUN python3 -c 'import sys, tomllib; \
p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; extra = p["optional-dependencies"]; \
lists = {"core": p["dependencies"], "extras": [r for e in sys.argv[1].split(",") if e for r in extra[e]], \
         "quantize": extra["quantize"], "export": p["dependencies"] + extra["export"]}; \
[open(f"/src/{name}.txt", "w").write("\n".join(reqs) + "\n") for name, reqs in lists.items()]' "$EXTRAS"

# This checkout as a wheel (.dockerignore lets only the packages and their metadata in).
FROM venv AS wheel
COPY . /src
RUN pip wheel --no-deps --wheel-dir /wheels /src

# The runtime's dependencies, each list its own layer, then the wheel itself. What the image
# runs needs no installer, no test suites and no debug symbols: uvloop's and httptools' wheels
# carry theirs (13 MB). Only those are stripped: libraries that auditwheel patched
# (numpy.libs, ...) break when strip rewrites them.
FROM venv AS core
COPY --from=requirements /src/core.txt /tmp/
RUN pip install -r /tmp/core.txt && rm /tmp/core.txt

FROM core AS app
COPY --from=requirements /src/extras.txt /tmp/
RUN pip install -r /tmp/extras.txt && rm /tmp/extras.txt \
 && find /opt/venv \( -path '*/site-packages/uvloop/*' -o -path '*/site-packages/httptools/*' \) -name '*.so' \
      -exec strip --strip-debug {} +
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl && pip check && rm -r /tmp/wheels \
 && pip uninstall --yes --quiet pip setuptools && find /opt/venv -depth -type d -name tests -exec rm -r {} +

# Export: the official checkpoint (downloaded by `export`, or the checkpoint context) to a
# verified fp32 ONNX file, with the CPU build of the torch release pyproject.toml pins.
FROM scratch AS checkpoint

FROM venv AS torch
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY --from=requirements /src/export.txt /tmp/
RUN grep -E '^(torch|torchvision)[=<>~!; ]' /tmp/export.txt > /tmp/torch.txt \
 && pip install --index-url "$TORCH_INDEX" -r /tmp/torch.txt \
 && pip install -r /tmp/export.txt && rm /tmp/export.txt /tmp/torch.txt

FROM torch AS export
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl && pip check
COPY --from=checkpoint / /checkpoint/
RUN ckpt=/checkpoint/midas_v21_small_256.pt \
 && midas-onnx export $(test -f "$ckpt" && echo --checkpoint "$ckpt") --output /models/midas_small.onnx

# Static INT8 of the export (onnxruntime, no torch), calibrated on the built-in photos, or on
# yours: the calibration context.
FROM scratch AS calibration

FROM core AS model
COPY --from=requirements /src/quantize.txt /tmp/
RUN pip install -r /tmp/quantize.txt
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl && pip check
COPY --from=export /models/midas_small.onnx /models/
COPY --from=calibration / /calibration/
RUN midas-onnx quantize --int8 $(test -n "$(ls -A /calibration)" && echo --calibration /calibration) \
      /models/midas_small.onnx

# The image that runs: non-root, every setting a MIDAS_ONNX_* variable (`midas-onnx serve
# --help` names each), keys from a mounted file (MIDAS_ONNX_API_KEY_FILE), never baked in.
FROM python AS runtime
ARG EXTRAS
# With ray, a Ray node's image: KubeRay's default probes of Ray pods call wget.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/midas midas \
 && case ",$EXTRAS," in *,ray,*) apt-get update && apt-get install --yes --no-install-recommends wget \
      && apt-get clean && rm -rf /var/lib/apt/lists/* ;; esac
COPY --from=app /opt/venv/ /opt/venv/
COPY --from=model /models/midas_small.int8.onnx /models/midas_small.int8.report.json /models/
# VERSION is midas_onnx.__version__ (tests/test_container.py holds them equal); SOURCE, the
# repository's URL, is given by whoever publishes the image.
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="midas-onnx" \
      org.opencontainers.image.description="MiDaS small monocular depth heatmaps over HTTP on CPUs, torch-free" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT"
USER 10001:10001
WORKDIR /home/midas
ENV MIDAS_ONNX_MODEL=/models/midas_small.int8.onnx \
    MIDAS_ONNX_HOST=0.0.0.0 \
    MIDAS_ONNX_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["python3", "-c", \
  "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MIDAS_ONNX_PORT', '8000'), timeout=4)"]
# Exec form: SIGTERM reaches the server itself, which drains accepted work and exits 0.
ENTRYPOINT ["midas-onnx"]
CMD ["serve"]
