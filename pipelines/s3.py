"""One way to open an S3 client (boto3), for the raw-bar source and the lake store.

Cheap to import (boto3 is imported when a client is made). Credentials come from boto3's own
chain (``AWS_ACCESS_KEY_ID`` ..., a profile, an instance role), never from afterbell's settings.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_client"]


def make_client(
    endpoint_url: str | None, region: str | None, *, max_attempts: int, pool: int = 10
) -> Any:
    """A boto3 S3 client: 5 s to connect, 60 s to read, ``max_attempts`` tries with standard
    backoff, ``pool`` connections; path-style addressing on a custom endpoint (MinIO, moto).

    Raises
    ------
    Exception
        Whatever boto3 raises for a bad endpoint URL or region (callers name their store).
    """
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {
        "region_name": region,
        "connect_timeout": 5,
        "read_timeout": 60,
        "retries": {"max_attempts": max_attempts, "mode": "standard"},
        "max_pool_connections": max(10, pool),
    }
    if endpoint_url:
        options["s3"] = {"addressing_style": "path"}
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url,
                                          config=Config(**options))
