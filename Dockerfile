# syntax=docker/dockerfile:1
# The cutover daemon in a container: docker build -t cutover . && docker run \
#   -v /etc/cutover:/etc/cutover:ro -v cutover-state:/var/lib/cutover -p 8480:8480 cutover
# The config must put the state store in the state volume
#   (state: {sqlite: /var/lib/cutover/cutover.db}) and listen on an address reachable from
# outside the container (api.listen: 0.0.0.0:8480, which needs api.tokens). If it listens
# elsewhere, set CUTOVER_HEALTH_URL to its /healthz.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cutover ./cutover
RUN pip install --no-cache-dir --root-user-action=ignore --prefix=/install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CUTOVER_HEALTH_URL=http://127.0.0.1:8480/healthz
COPY --from=build /install /usr/local
RUN groupadd --system --gid 10001 cutover \
 && useradd --system --uid 10001 --gid cutover --home-dir /var/lib/cutover \
      --shell /usr/sbin/nologin cutover \
 && install -d -o cutover -g cutover -m 0750 /var/lib/cutover \
 && install -d -m 0755 /etc/cutover
# numeric, so that Kubernetes' runAsNonRoot can verify it
USER 10001:10001
WORKDIR /var/lib/cutover
VOLUME ["/etc/cutover", "/var/lib/cutover"]
EXPOSE 8480
# slim images have no curl: Python's urllib fails on a refused connection or a non-2xx answer
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['CUTOVER_HEALTH_URL'], timeout=3)"]
# SIGTERM stops the daemon cleanly without touching traffic
STOPSIGNAL SIGTERM
ENTRYPOINT ["cutover"]
CMD ["daemon", "-c", "/etc/cutover/config.yaml"]
