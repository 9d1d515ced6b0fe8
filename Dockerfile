# One image for every cloudbill service; the compose file picks the command (`cloudbill run <service>`).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY sims ./sims
COPY cloudbill ./cloudbill
RUN pip install . && useradd --system --uid 10001 cloudbill
USER cloudbill
ENTRYPOINT ["cloudbill"]
CMD ["--help"]
