"""Ingest: stages that turn listed source objects into indexed rows, and their runners.

Stages are plain functions over batch manifests (lists of ``{uri, etag, size}``); the
embedded runner calls them in-process, Celery tasks (a later issue) wrap the same calls.
"""
