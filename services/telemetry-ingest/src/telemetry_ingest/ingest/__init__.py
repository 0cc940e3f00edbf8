"""Readings in: consume batches from the broker, decode them into COPY rows, group-commit them to the store."""
