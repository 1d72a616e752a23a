# Test-only stand-in for python:3.11-slim: the debootstrapped Debian base (imported as
# $BASE) plus a wheelhouse, with pip told to install from it and never from an index.
# Built by the compose tier with the wheelhouse directory as its context.
ARG BASE
FROM ${BASE}
COPY . /wheelhouse/
ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse PIP_DISABLE_PIP_VERSION_CHECK=1
CMD ["python3"]
