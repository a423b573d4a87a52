# syntax=docker/dockerfile:1
# herald's container image: built in a Rust image, run from a distroless
# one (glibc and CA certificates, no shell, no package manager) as a
# non-root user, with the SQLite file on a volume.
#
#   docker build -t herald .
#   docker run -v herald-data:/var/lib/herald -v ./herald.toml:/etc/herald/herald.toml:ro -p 8080:8080 herald

FROM rust:1.89-slim-bookworm AS build
WORKDIR /src
# The dependencies first, so a source change does not rebuild them: the
# registry and target folders are build caches.
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
COPY schemas ./schemas
COPY herald.example.toml mock-faults.example.toml openapi.json ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin herald \
    && install -D -m 0755 target/release/herald /out/herald \
    && install -d -m 0750 /out/var/lib/herald

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/herald /usr/local/bin/herald
# The state folder belongs to the image's non-root user (65532).
COPY --from=build --chown=65532:65532 /out/var/lib/herald /var/lib/herald
USER 65532:65532
WORKDIR /var/lib/herald
VOLUME ["/var/lib/herald"]
# The clients in the container (the health check) reach the server here;
# with TLS set HERALD_SERVER=https://localhost:8080 and HERALD_CACERT.
ENV HERALD_SERVER=http://127.0.0.1:8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/herald", "ready"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve", "--config", "/etc/herald/herald.toml", "--listen", "0.0.0.0:8080", "--database", "/var/lib/herald/herald.db"]
