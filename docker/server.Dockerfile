# The SharpZO inference server: open_clip on torch (CUDA when the container gets a GPU, else CPU).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Only the dependency list reaches the install layer below, so that edits elsewhere in
# pyproject.toml do not reinstall torch (several GB).
FROM ${BASE_IMAGE} AS requirements
# the extras to install: "server scale" for Ray Serve and PostgreSQL (docker-compose.scale.yml)
ARG EXTRAS=server
COPY pyproject.toml docker/requirements.py /tmp/
RUN python3 /tmp/requirements.py /tmp/pyproject.toml ${EXTRAS} >/tmp/requirements.txt

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY docker/base-setup.sh /tmp/build/
RUN sh /tmp/build/base-setup.sh

ARG WHEELHOUSE_URL=
COPY docker/pip-install.sh constraints.txt /tmp/build/
COPY --from=requirements /tmp/requirements.txt /tmp/build/
COPY docker/certs/ /tmp/certs/
RUN /tmp/build/pip-install.sh -r /tmp/build/requirements.txt -c /tmp/build/constraints.txt

# Only what the server runs: the wire protocol, image decoding and identity (data) and the serving package (no
# client, no offline tools).
COPY pyproject.toml README.md /tmp/build/project/
COPY src/sharpzo/__init__.py /tmp/build/project/src/sharpzo/
COPY src/sharpzo/shared /tmp/build/project/src/sharpzo/shared
COPY src/sharpzo/data /tmp/build/project/src/sharpzo/data
COPY src/sharpzo/server /tmp/build/project/src/sharpzo/server
RUN /tmp/build/pip-install.sh --no-deps --no-build-isolation /tmp/build/project \
 && rm -rf /tmp/build /tmp/certs

# open_clip downloads pretrained tags through Hugging Face (HF_HOME) into /weights, a volume in
# docker-compose.yml, so real CLIP weights are fetched once.
ENV SHARPZO_LEDGER=/data/ledger.sqlite3 \
    SHARPZO_IMAGE_CACHE_DIR=/cache/image-sets \
    XDG_CACHE_HOME=/weights/cache \
    HF_HOME=/weights/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib
USER sharpzo
WORKDIR /home/sharpzo
EXPOSE 8000
# python -m rather than `sharpzo serve`: the sharpzo command imports the client and its dataset readers.
CMD ["python", "-m", "sharpzo.server", "--host", "0.0.0.0", "--port", "8000"]
