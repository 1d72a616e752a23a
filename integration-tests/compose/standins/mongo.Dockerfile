# Test-only MongoDB stand-in: SecantusDB (MongoDB wire protocol, GPL-2.0, beta) from the
# wheelhouse, behind `mongod` and `mongosh` shims that understand what docker-compose.yml
# runs (`mongod --port P --bind_ip_all`, the `mongosh --eval` ping healthcheck).
# Never tagged as mongo:*; the compose file's MONGO_IMAGE points at it in the test only.
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
RUN pip install --no-cache-dir secantusdb && mkdir -p /data/db
COPY mongod.py /usr/local/bin/mongod
COPY mongosh.py /usr/local/bin/mongosh
EXPOSE 27017
CMD ["mongod", "--bind_ip_all"]
