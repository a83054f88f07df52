# streamq: a static binary on a distroless, non-root base.
# Build: docker build -t ghcr.io/streamq/streamq:0.1.0 .
#        docker build --target shell -t ghcr.io/streamq/streamq:0.1.0-shell .
# The operator image has no shell. Worker pods whose handler is a shell
# command (examples/consumer.yaml) use the `shell` image: the same, plus a
# static busybox in /bin.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl \
 && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --target x86_64-unknown-linux-musl --bin streamq

# The worker image for shell handlers (`--target shell`): the runtime below plus busybox.
FROM busybox:1.36.1-musl AS busybox
FROM gcr.io/distroless/static-debian12:nonroot AS shell
COPY --from=busybox /bin /bin
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/streamq /usr/local/bin/streamq
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/streamq"]
CMD ["run"]

# The default, last stage: the operator and worker image.
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/streamq /usr/local/bin/streamq
# 65532 is distroless' nonroot user; the chart runs with the same id.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/streamq"]
CMD ["run"]
