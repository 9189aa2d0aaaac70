# The Keel service image: one installable project, console script `keel`.
# .dockerignore keeps secrets/, var/, .venv/ and .env out of the build context, so no key, no
# password and no local database ever lands in an image layer.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . && useradd --create-home keel && mkdir -m 700 -p /app/var && chown keel /app/var
USER keel
EXPOSE 8000
CMD ["keel", "serve", "--host", "0.0.0.0", "--port", "8000"]
