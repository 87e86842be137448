# sipledger runtime image (b2bua and pipeline services of docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sipledger ./sipledger
COPY b2bua ./b2bua
COPY pipeline ./pipeline
COPY schemas ./schemas
COPY tariff ./tariff
RUN pip install --no-cache-dir .
# The B2BUA core compiled by mypyc (b2bua/native.py) inside the installed package; the compiler is
# removed afterwards (the image runs the extension modules, not the compiler).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir "mypy==2.4.1" "setuptools>=68" \
    && python -m b2bua.native_build \
    && pip uninstall -y mypy && apt-get purge -y gcc libc6-dev && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*
# `sipledger notebook run NAME` finds notebooks/NAME.ipynb in the working directory.
COPY notebooks ./notebooks
COPY deploy/docker/sipledger.toml /etc/sipledger/sipledger.toml
ENTRYPOINT ["sipledger"]
