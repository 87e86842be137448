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
# `sipledger notebook run NAME` finds notebooks/NAME.ipynb in the working directory.
COPY notebooks ./notebooks
COPY deploy/docker/sipledger.toml /etc/sipledger/sipledger.toml
ENTRYPOINT ["sipledger"]
