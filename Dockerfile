# midas-onnx: depth heatmaps over HTTP, torch-free at run time.
#
#   docker build -t midas-onnx .
#   docker run -p 8000:8000 --group-add "$(id -g)" -e MIDAS_ONNX_API_KEY_FILE=/run/secrets/midas-onnx-keys \
#     -v "$PWD/keys.txt:/run/secrets/midas-onnx-keys:ro" midas-onnx
#
# Docker 23 or later (BuildKit, its default builder: the export stage's cache mount needs it),
# or podman/buildah. The model is exported (CPU PyTorch) and quantized to INT8 while the image
# builds; the image that runs holds Python, the runtime, the EXTRAS and the INT8 model, never torch.
# Build arguments (--build-arg NAME=VALUE):
#   BASE         a Debian bookworm image with Python 3.11 and its venv module
#   EXTRAS       extras installed in the image: serve (default), or serve,ray for Ray workers
#   MODEL        the model exported (`midas-onnx export --model`): midas-small (default), da-v2-small, ...
#   CHECKPOINT   the offline checkpoint's file name in the checkout's top folder (a .pt or .pth file;
#                default: MODEL's official file name); used when there, else downloaded
#   TORCH_INDEX  where the export stage gets torch (the CPU builds; PyPI's carry CUDA)
#   SOURCE       the repository's URL, for the org.opencontainers.image.source label (none if unset)
# Every pip install is held to container/constraints.txt (refreshing it: docs/how-to/container.md).
# Named build contexts (--build-context NAME=DIR, BuildKit or podman) replace a stage:
#   export=DIR       a folder holding MODEL's fp32 export, e.g. models/ after `midas-onnx export`
#                    (skips the PyTorch stages)
#   calibration=DIR  photos like yours to calibrate INT8 on (else the built-in photos)
# Podman: add --format docker, or the OCI format drops HEALTHCHECK.

ARG BASE=python:3.11-slim-bookworm
ARG EXTRAS=serve
ARG MODEL=midas-small
ARG SOURCE=

# The environment every stage shares; the venv at /opt/venv has the same paths on
# python:3.11-slim and on a Debian python3 base.
FROM ${BASE} AS python
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# The build stages' venv, with binutils for strip; the image that runs copies /opt/venv alone.
# Every pip install in these stages (build isolation included) takes the pinned versions.
FROM python AS venv
RUN apt-get update && apt-get install --yes --no-install-recommends binutils && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
COPY container/constraints.txt /opt/constraints.txt
ENV PIP_CONSTRAINT=/opt/constraints.txt

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

# Export: MODEL's official checkpoint to a verified fp32 ONNX file, with the CPU build of the
# torch release pyproject.toml pins (torch and torchvision from TORCH_INDEX, their dependencies
# from PyPI). The checkpoint: CHECKPOINT in the build context's top folder if it is there, else
# downloaded by `export`, once: the cache mount (at /cache: buildah 1.28 breaks the stage's next
# step with one under /root) keeps torch.hub's and Hugging Face's caches between builds.
FROM venv AS torch
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY --from=requirements /src/export.txt /tmp/
RUN grep -E '^(torch|torchvision)[=<>~!; ]' /tmp/export.txt > /tmp/torch.txt \
 && pip install --no-deps --index-url "$TORCH_INDEX" -r /tmp/torch.txt \
 && pip install -r /tmp/export.txt && pip check && rm /tmp/export.txt /tmp/torch.txt

FROM torch AS exporter
ARG MODEL
ARG CHECKPOINT=
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl && pip check
# pyproject.toml keeps the sources from matching nothing, which only BuildKit allows.
COPY pyproject.toml *.pt *.pth /checkpoint/
WORKDIR /export
RUN --mount=type=cache,target=/cache,id=midas-onnx-checkpoints,sharing=locked \
    official="$(python3 -c 'import sys; from runtime.model.model_description import describe; \
print(describe(sys.argv[1]).checkpoint.filename)' "$MODEL")" \
 && ckpt="/checkpoint/${CHECKPOINT:-$official}" \
 && if [ -n "$CHECKPOINT" ] && [ ! -f "$ckpt" ]; then \
      echo "CHECKPOINT=$CHECKPOINT: no such .pt/.pth file in the build context's top folder" >&2; exit 1; fi \
 && HF_HOME=/cache/huggingface TORCH_HOME=/cache/torch \
    midas-onnx export --model "$MODEL" $(test -f "$ckpt" && echo --checkpoint "$ckpt")

# The export alone, laid out as `midas-onnx export` lays out models/: the export context's shape.
FROM scratch AS export
COPY --from=exporter /export/models/ /

# Static INT8 of the export (onnxruntime, no torch), calibrated on the built-in photos, or on
# yours: the calibration context.
FROM scratch AS calibration

FROM core AS model
ARG MODEL
COPY --from=requirements /src/quantize.txt /tmp/
RUN pip install -r /tmp/quantize.txt
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl && pip check
COPY --from=export /*.onnx /exported/
COPY --from=calibration / /calibration/
# The image's model is named after MODEL (/models/midas-small.int8.onnx), which the runtime's
# ENV can name; the export's file has `export`'s name (midas_small.onnx).
RUN name="$(python3 -c 'import sys; from midas_onnx.cli.export_cmd import default_output; \
print(default_output(sys.argv[1]).name)' "$MODEL")" \
 && if [ ! -f "/exported/$name" ]; then \
      echo "MODEL=$MODEL: the export holds no $name, only: $(ls /exported)" >&2; exit 1; fi \
 && mkdir /models && midas-onnx quantize --int8 $(test -n "$(ls -A /calibration)" && echo --calibration /calibration) \
      --output "/models/$MODEL.int8.onnx" "/exported/$name"

# The image that runs: non-root, every setting a MIDAS_ONNX_* variable (`midas-onnx serve
# --help` names each), keys from a mounted file (MIDAS_ONNX_API_KEY_FILE), never baked in.
FROM python AS runtime
ARG EXTRAS
# Login shells (`bash -l`, as KubeRay starts Ray) reset PATH in /etc/profile, then read
# /etc/profile.d: the venv goes back in front there. With ray, a Ray node's image: KubeRay's
# default probes of Ray pods call wget.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/midas midas \
 && echo 'PATH="/opt/venv/bin:$PATH"' > /etc/profile.d/midas-onnx-venv.sh \
 && case ",$EXTRAS," in *,ray,*) apt-get update && apt-get install --yes --no-install-recommends wget \
      && apt-get clean && rm -rf /var/lib/apt/lists/* ;; esac
COPY --from=app /opt/venv/ /opt/venv/
COPY --from=model /models/ /models/
# VERSION is midas_onnx.__version__ (tests/test_container.py holds them equal).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="midas-onnx" \
      org.opencontainers.image.description="Monocular depth heatmaps over HTTP on CPUs, torch-free" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
USER 10001:10001
WORKDIR /home/midas
ARG MODEL
ENV MIDAS_ONNX_MODEL=/models/${MODEL}.int8.onnx \
    MIDAS_ONNX_HOST=0.0.0.0 \
    MIDAS_ONNX_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["python3", "-c", \
  "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MIDAS_ONNX_PORT', '8000'), timeout=4)"]
# Exec form: SIGTERM reaches the server itself, which drains accepted work and exits 0.
ENTRYPOINT ["midas-onnx"]
CMD ["serve"]

# The source label only when SOURCE is given (pyproject.toml names no repository URL): an
# empty label would claim one.
FROM runtime AS runtime-
FROM runtime AS runtime-with-source
ARG SOURCE
LABEL org.opencontainers.image.source="${SOURCE}"
FROM runtime-${SOURCE:+with-source}
