# Builds the waitroom-worker binary (librdkafka is built from source by rdkafka-sys)
# and runs it on a slim Debian (libssl3: TLS to Redis and Kafka goes through OpenSSL).
# Without the default `tools` feature: the image carries only the worker (run,
# status, inspect, health), not bench, demo, enqueue or the local servers they start.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY lua ./lua
RUN cargo build --release --locked --bin waitroom-worker --no-default-features

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/waitroom-worker /usr/local/bin/waitroom-worker
USER nobody
EXPOSE 9090
# The binary probes its own /healthz (the slim image has no shell tools for it):
# exit 0 on 2xx. QUEUE_HEALTH_URL moves it if --http-addr is not on port 9090.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["waitroom-worker", "health"]
ENTRYPOINT ["waitroom-worker"]
CMD ["run"]
