# Builds the waitroom-worker binary (librdkafka is built from source by rdkafka-sys)
# and runs it on a slim Debian (libssl3: TLS to Redis and Kafka goes through OpenSSL).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY lua ./lua
RUN cargo build --release --locked --bin waitroom-worker

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/waitroom-worker /usr/local/bin/waitroom-worker
USER nobody
EXPOSE 9090
ENTRYPOINT ["waitroom-worker"]
CMD ["run"]
