# The rodin image: the `rodin` CLI and the workers (docker-compose.yml runs it as the migration,
# the CPU workers and the GPU workers).
#
#   docker build -t rodin .                                                     # CPU PyTorch
#   docker build -t rodin --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# A CUDA build of PyTorch brings its own CUDA libraries; the host needs only the NVIDIA driver
# and the NVIDIA Container Toolkit.
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"
# `git rev-parse --short=12 HEAD`: recorded as every checkpoint's code version.
ARG CODE_VERSION=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTORCH_NVML_BASED_CUDA_CHECK=1 \
    MPLBACKEND=Agg

# PyTorch first, in its own layer: it is by far the largest and changes least often.
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple "${TORCH_SPEC}"

RUN useradd --create-home --uid 1000 rodin
WORKDIR /opt/rodin
COPY pyproject.toml README.md alembic.ini ./
COPY atlas_core ./atlas_core
COPY orchestrator ./orchestrator
COPY workers ./workers
COPY migrations ./migrations
RUN pip install ".[postgres,s3]" && python -c "import orchestrator.cli.main, workers.runtime"

ENV RODIN_CODE_VERSION=${CODE_VERSION} \
    RODIN_HOME=/home/rodin/.rodin
USER rodin
WORKDIR /home/rodin
ENTRYPOINT ["rodin"]
CMD ["--help"]
