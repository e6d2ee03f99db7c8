"""The lake on S3: each stage process works on its home's copy and synchronises at its edges.

In the production profile (or whenever ``AFTERBELL_LAKE_URL`` is set, see
:attr:`pipelines.settings.Settings.lake_store_url`) an S3 prefix is the system of record of the
folders of ``$AFTERBELL_HOME`` that the stages share (:data:`SYNCED_FOLDERS`): the Parquet lake,
the raw inputs, the quarantine, the Feast offline files, the stage records and the Great
Expectations reports. Every stage task (an Airflow task on any Celery worker, or ``afterbell
stage``) runs inside :func:`synced`:

1. :meth:`LakeStore.pull` downloads every object under the prefix whose ETag differs from the one
   this home last synced (or whose local copy is missing), each written atomically (temporary
   file next to it, fsync, :func:`os.replace`); local files are never deleted;
2. the stage runs on the local copy, exactly as in the embedded profile;
3. :meth:`LakeStore.push` uploads every local file of those folders created or changed since the
   last sync (size, mtime and inode against the manifest; a file rewritten with the same bytes,
   as a re-run rewrites its partitions, is not uploaded again). It runs even when the stage
   failed: everything the stages write is a complete, atomically written file (a quarantined
   input above all).

Objects mirror the home's layout below the prefix: ``s3://afterbell-lake/lake`` keeps
``$AFTERBELL_HOME/lake/bars/session=2017-12-29/part-0.parquet`` as
``lake/lake/bars/session=2017-12-29/part-0.parquet`` in bucket ``afterbell-lake``. Hidden files
and folders (the lake's ``.<name>.<pid>.<hex>.tmp`` temporaries, staging folders), ``*.tmp`` and
``*.lock`` files are never synced, nor any other folder of the home.

What this home last synced is recorded in ``$AFTERBELL_HOME/.lake-sync/manifest.json`` (per
file: size, mtime, inode, MD5 and the object's ETag; written atomically); a lock file next to it
serialises the syncs of processes sharing one home (the stages themselves are not serialised).
A manifest written for another store URL or endpoint is ignored.

Not handled, by design:

- deletes: a file removed locally stays in S3 and comes back to homes that never had it (or that
  lost it); an object removed from S3 stays in the homes that have it. The stages rewrite files
  in place (same names), with one exception: re-ingesting a session from differently named
  files leaves the earlier raw files in S3, and a pull brings them back into the raw folder;
- two writers of one key: concurrent stage processes on different homes write different
  partitions, and each pushes only what it changed, so they do not interfere; two processes
  that write the same file concurrently race, and the last push wins (in practice: the Great
  Expectations project files and Data Docs pages under ``reports/``, which every validating
  stage rewrites; the last one pushed is kept). On pull the store wins: a local change not yet
  pushed is overwritten by a newer object of the same key (logged);
- the home's other state (``state/`` retrain requests, which the heavy stage consumes by moving
  them, ``broker/``, the ``KILL_SWITCH`` file, the embedded profile's ``feast/`` and ``mlflow/``
  folders) stays per home.

Cost: a pull lists the whole prefix (one request per 1,000 objects) and downloads only what
changed; a push walks the synced folders (one ``stat`` per file) and uploads only what changed,
in parallel (:attr:`LakeStoreConfig.max_workers`). An object is uploaded in one request (at most
5 GiB). Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles), the endpoint from
``AFTERBELL_S3_ENDPOINT_URL`` (as for raw S3 inputs, :class:`pipelines.sources.S3Config`). The
credentials are never logged nor put in a message, the endpoint only through
:func:`pipelines.settings.redact_url`. In the embedded profile :func:`synced` does nothing and
imports nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pipelines.settings import redact_url

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = logging.getLogger("afterbell.lake_sync")

#: Folders of ``$AFTERBELL_HOME`` kept in the lake store (lake, raw inputs, quarantine, Feast
#: offline files, stage records, data-quality reports).
SYNCED_FOLDERS: tuple[str, ...] = ("lake", "raw", "quarantine", "offline", "runs", "reports")
#: The endpoint and region variables of raw S3 inputs (:meth:`pipelines.sources.S3Config.from_env`,
#: not imported here: it costs pandas).
ENV_S3_ENDPOINT_URL = "AFTERBELL_S3_ENDPOINT_URL"
ENV_S3_REGION = "AWS_DEFAULT_REGION"
#: Folder of the home holding the manifest and the lock (never synced).
STATE_FOLDER = ".lake-sync"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "lock"
#: Largest object a single PUT may carry.
MAX_OBJECT_BYTES = 5 * 1024**3
_SCHEME = "s3://"
_CHUNK = 1024 * 1024
#: Files up to this size are uploaded from memory (one read; a streamed body costs an
#: ``Expect: 100-continue`` round trip); larger ones are streamed from the file.
_IN_MEMORY = 32 * 1024 * 1024


class LakeSyncError(RuntimeError):
    """The lake store could not be read or written (the message names the store and endpoint).

    Not a data error: a DAG task retries it (the store may be briefly unreachable).
    """


# --------------------------------------------------------------------------------- config
def parse_store_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket[/prefix]`` (prefix without surrounding ``/``).

    Raises
    ------
    ValueError
        If ``url`` is not an ``s3://`` URL naming a bucket.
    """
    text = url.strip()
    if not text.startswith(_SCHEME):
        raise ValueError(f"AFTERBELL_LAKE_URL must be s3://bucket[/prefix], got "
                         f"{redact_url(text)!r}")
    bucket, _, prefix = text[len(_SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"AFTERBELL_LAKE_URL names no bucket: {redact_url(text)!r}")
    return bucket, prefix.strip("/")


@dataclass(frozen=True)
class LakeStoreConfig:
    """Where the lake store lives and how this process reaches it (no credentials).

    Parameters
    ----------
    bucket : str
        Bucket of the store.
    prefix : str, optional
        Key prefix below which the home's folders are mirrored ("" : the bucket's root).
    endpoint_url : str, optional
        S3-compatible endpoint (MinIO, moto); None for AWS itself.
    region : str, optional
        Region of the client.
    folders : tuple of str, optional
        Folders of the home that are synced.
    max_workers : int, optional
        Concurrent transfers.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    folders: tuple[str, ...] = SYNCED_FOLDERS
    max_workers: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.prefix.strip("/"))
        if not self.bucket:
            raise ValueError("LakeStoreConfig needs a bucket")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> LakeStoreConfig:
        """The store of :attr:`Settings.lake_store_url`, endpoint and region from ``environ``
        (default ``os.environ``: ``AFTERBELL_S3_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``).

        Raises
        ------
        ValueError
            If the settings name no lake store, or not an ``s3://`` one.
        """
        url = settings.lake_store_url
        if not url:
            raise ValueError("no lake store: AFTERBELL_LAKE_URL is empty and the profile is "
                             f"{settings.profile!r}")
        bucket, prefix = parse_store_url(url)
        env = os.environ if environ is None else environ
        endpoint = env.get(ENV_S3_ENDPOINT_URL, "").strip() or None
        region = env.get(ENV_S3_REGION, "").strip() or "us-east-1"
        return cls(bucket=bucket, prefix=prefix, endpoint_url=endpoint, region=region)

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``."""
        return f"{_SCHEME}{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def where(self) -> str:
        """The store and its endpoint, for messages (the endpoint's secrets masked)."""
        endpoint = redact_url(self.endpoint_url) if self.endpoint_url else "AWS default"
        return f"lake store {self.url} (endpoint {endpoint})"

    def key(self, rel: str) -> str:
        """Object key of the home-relative path ``rel`` (``lake/bars/...``)."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str | None:
        """Home-relative path of ``key``, or None when the key is not one this store syncs."""
        if self.prefix:
            if not key.startswith(self.prefix + "/"):
                return None
            key = key[len(self.prefix) + 1:]
        return key if is_synced(key, self.folders) else None


def is_synced(rel: str, folders: tuple[str, ...] = SYNCED_FOLDERS) -> bool:
    """Whether the home-relative path ``rel`` is one the store keeps: below a synced folder, no
    hidden part (temporaries, staging folders), not a ``.tmp`` or ``.lock`` file, no ``..``."""
    parts = rel.split("/")
    if len(parts) < 2 or parts[0] not in folders:
        return False
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return False
    return not parts[-1].endswith((".tmp", ".lock"))


# --------------------------------------------------------------------------------- manifest
@dataclass
class _Entry:
    """What a home last synced of one file."""

    size: int
    mtime_ns: int
    ino: int
    md5: str
    etag: str

    def same_stat(self, st: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass
class _Manifest:
    store: str
    endpoint: str
    files: dict[str, _Entry] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, cfg: LakeStoreConfig) -> _Manifest:
        endpoint = cfg.endpoint_url or ""
        fresh = cls(cfg.url, endpoint)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return fresh
        except (OSError, ValueError) as exc:
            log.warning("lake sync: unreadable manifest %s (%s): starting afresh", path, exc)
            return fresh
        if data.get("store") != cfg.url or data.get("endpoint", "") != endpoint:
            log.info("lake sync: manifest %s is another store's: starting afresh", path)
            return fresh
        try:
            fresh.files = {rel: _Entry(**e) for rel, e in data.get("files", {}).items()}
        except TypeError as exc:
            log.warning("lake sync: malformed manifest %s (%s): starting afresh", path, exc)
        return fresh

    def save(self, path: Path) -> None:
        payload = {
            "version": 1, "store": self.store, "endpoint": self.endpoint,
            "files": {rel: vars(e) for rel, e in sorted(self.files.items())},
        }
        _write_atomic(path, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode())


def _write_atomic(dest: Path, data: bytes) -> None:
    from pipelines import lake  # pandas and pyarrow: only where a sync writes

    lake.write_atomic(dest, lambda fh: fh.write(data))


def _md5_of(fh: Any) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    for block in iter(lambda: fh.read(_CHUNK), b""):
        digest.update(block)
    return digest.hexdigest()


def _etag_md5(etag: str) -> str | None:
    """The MD5 an ETag states (a single-part upload's), or None (multipart: ``"...-N"``)."""
    value = etag.strip('"')
    return value if len(value) == 32 and "-" not in value else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX ``flock``; none elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------- store
@dataclass(frozen=True)
class SyncResult:
    """What one :meth:`LakeStore.pull` or :meth:`LakeStore.push` transferred."""

    files: tuple[str, ...]
    bytes: int
    seconds: float


class LakeStore:
    """The lake store of one home: :meth:`pull` and :meth:`push` (see the module docstring).

    Parameters
    ----------
    home : Path
        ``$AFTERBELL_HOME``.
    config : LakeStoreConfig
        The store.
    client : optional
        A boto3 S3 client (default: one made from ``config`` on first use).
    """

    def __init__(self, home: Path, config: LakeStoreConfig, client: Any = None) -> None:
        self.home = Path(home)
        self.config = config
        self._client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> LakeStore:
        """The store of ``settings`` (:meth:`LakeStoreConfig.from_settings`)."""
        return cls(settings.home, LakeStoreConfig.from_settings(settings))

    # ----------------------------------------------------------------------------- plumbing
    @property
    def state_dir(self) -> Path:
        return self.home / STATE_FOLDER

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / MANIFEST_NAME

    def client(self) -> Any:
        if self._client is None:
            from pipelines.s3 import make_client

            cfg = self.config
            try:
                self._client = make_client(cfg.endpoint_url, cfg.region, max_attempts=3,
                                           pool=cfg.max_workers)
            except Exception as exc:  # bad endpoint URL, unknown region...
                raise LakeSyncError(f"{cfg.where}: cannot create an S3 client: "
                                    f"{type(exc).__name__}") from exc
        return self._client

    def _error(self, exc: BaseException, action: str, key: str | None = None) -> LakeSyncError:
        """A :class:`LakeSyncError` naming the store, endpoint, key and what went wrong."""
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        cfg = self.config
        obj = f" (s3://{cfg.bucket}/{key})" if key is not None else ""
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                reason = (f"no such bucket {cfg.bucket!r}: create it (docker/compose.yaml's "
                          "s3-init does) or point AFTERBELL_LAKE_URL at an existing one")
            elif code in ("AccessDenied", "403", "InvalidAccessKeyId",
                          "SignatureDoesNotMatch") or status == 403:
                reason = f"access denied ({code or status}; check the AWS credentials)"
            else:
                reason = f"S3 error {code or status}: {err.get('Message', '')}".rstrip(": ")
        elif isinstance(exc, EndpointConnectionError):
            reason = "the endpoint is unreachable"
        elif isinstance(exc, NoCredentialsError | PartialCredentialsError):
            reason = ("no usable AWS credentials; set AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        elif isinstance(exc, OSError):
            reason = f"local file error: {exc}"
        else:  # timeouts and the like: their text may name the endpoint URL
            reason = f"{type(exc).__name__}: {redact_url(str(exc))}"
        return LakeSyncError(f"{cfg.where}: {action}{obj} failed: {reason}")

    def _local_files(self) -> dict[str, Path]:
        """Home-relative path -> file of every synced local file."""
        found: dict[str, Path] = {}
        for folder in self.config.folders:
            base = self.home / folder
            if not base.is_dir():
                continue
            for root, dirs, names in os.walk(base):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in names:
                    path = Path(root) / name
                    rel = path.relative_to(self.home).as_posix()
                    if is_synced(rel, self.config.folders) and not path.is_symlink():
                        found[rel] = path
        return found

    def _listing(self) -> dict[str, tuple[str, int]]:
        """Home-relative path -> (ETag, size) of every synced object of the store."""
        cfg = self.config
        prefix = f"{cfg.prefix}/" if cfg.prefix else ""
        out: dict[str, tuple[str, int]] = {}
        try:
            pages = self.client().get_paginator("list_objects_v2").paginate(
                Bucket=cfg.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = cfg.rel(obj["Key"])
                    if rel is not None:
                        out[rel] = (str(obj["ETag"]), int(obj["Size"]))
        except LakeSyncError:
            raise
        except Exception as exc:
            raise self._error(exc, "listing") from exc
        return out

    def _run(self, jobs: list[Any], work: Any) -> tuple[list[Any], BaseException | None]:
        """Run ``work`` over ``jobs`` concurrently; (results of the successes, first error)."""
        done: list[Any] = []
        first: BaseException | None = None
        if not jobs:
            return done, first
        with ThreadPoolExecutor(max_workers=min(self.config.max_workers, len(jobs))) as pool:
            futures = [pool.submit(work, job) for job in jobs]
            for future in futures:
                try:
                    done.append(future.result())
                except Exception as exc:
                    first = first or exc
        return done, first

    # ----------------------------------------------------------------------------- pull
    def pull(self) -> SyncResult:
        """Download what changed in the store since this home last synced it.

        Returns
        -------
        SyncResult
            The home-relative paths written.

        Raises
        ------
        LakeSyncError
            Naming the store, endpoint and key, when the bucket does not exist, the endpoint
            does not answer, the credentials are refused, or a file cannot be written. Files
            downloaded before the error are kept and recorded.
        """
        t0 = time.perf_counter()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.state_dir / LOCK_NAME):
            manifest = _Manifest.load(self.manifest_path, self.config)
            recorded = 0
            jobs: list[tuple[str, str, int]] = []
            for rel, (etag, size) in sorted(self._listing().items()):
                path = self.home / rel
                try:
                    st: os.stat_result | None = path.stat()
                except FileNotFoundError:
                    st = None
                entry = manifest.files.get(rel)
                if st is not None and entry is not None and entry.etag == etag:
                    continue  # unchanged in the store (a local change is pushed later)
                md5 = _etag_md5(etag)
                if st is not None and st.st_size == size and md5 is not None:
                    with open(path, "rb") as fh:
                        st = os.fstat(fh.fileno())
                        if _md5_of(fh) == md5:  # already here, byte for byte
                            manifest.files[rel] = _Entry(st.st_size, st.st_mtime_ns,
                                                         st.st_ino, md5, etag)
                            recorded += 1
                            continue
                if st is not None and entry is not None and not entry.same_stat(st):
                    log.warning("lake sync: %s changed here and in %s; the store's copy wins",
                                rel, self.config.url)
                jobs.append((rel, etag, size))
            done, error = self._run(jobs, self._download)
            for rel, entry in done:
                manifest.files[rel] = entry
            if done or recorded or not self.manifest_path.exists():
                manifest.save(self.manifest_path)
        if error is not None:
            raise error
        result = SyncResult(tuple(sorted(r for r, _ in done)), sum(e.size for _, e in done),
                            time.perf_counter() - t0)
        log.info("lake sync: pulled %d file(s), %d bytes, from %s in %.2fs", len(result.files),
                 result.bytes, self.config.url, result.seconds)
        return result

    def _download(self, job: tuple[str, str, int]) -> tuple[str, _Entry]:
        rel, etag, _size = job
        key = self.config.key(rel)
        dest = self.home / rel
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            response = self.client().get_object(Bucket=self.config.bucket, Key=key)
            etag = str(response.get("ETag", etag))
            digest = hashlib.md5(usedforsecurity=False)
            expected = response.get("ContentLength")

            def fill(fh: BinaryIO) -> None:
                body = response["Body"]
                for block in iter(lambda: body.read(_CHUNK), b""):
                    digest.update(block)
                    fh.write(block)
                got = fh.tell()
                if expected is not None and int(expected) != got:
                    raise OSError(f"truncated download: {got} of {expected} bytes")

            from pipelines import lake  # pandas and pyarrow: only where a sync writes

            lake.write_atomic(dest, fill)  # temp file, fsync, rename; none left on error
            st = dest.stat()
        except LakeSyncError:
            raise
        except Exception as exc:
            raise self._error(exc, "download", key) from exc
        return rel, _Entry(st.st_size, st.st_mtime_ns, st.st_ino, digest.hexdigest(), etag)

    # ----------------------------------------------------------------------------- push
    def push(self) -> SyncResult:
        """Upload the synced files created or changed here since the last sync.

        Returns
        -------
        SyncResult
            The home-relative paths uploaded.

        Raises
        ------
        LakeSyncError
            Naming the store, endpoint and key (see :meth:`pull`). Files uploaded before the
            error are recorded: a retry uploads only the rest.
        """
        t0 = time.perf_counter()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.state_dir / LOCK_NAME):
            manifest = _Manifest.load(self.manifest_path, self.config)
            jobs: list[tuple[str, _Entry | None]] = []
            for rel, path in sorted(self._local_files().items()):
                entry = manifest.files.get(rel)
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # removed meanwhile
                if entry is not None and entry.same_stat(st):
                    continue
                jobs.append((rel, entry))
            done, error = self._run(jobs, self._upload)
            uploaded: list[tuple[str, int]] = []
            for rel, entry, sent in done:
                if entry is None:
                    continue
                manifest.files[rel] = entry
                if sent:
                    uploaded.append((rel, entry.size))
            if done:
                manifest.save(self.manifest_path)
        if error is not None:
            raise error
        result = SyncResult(tuple(sorted(r for r, _ in uploaded)), sum(n for _, n in uploaded),
                            time.perf_counter() - t0)
        log.info("lake sync: pushed %d file(s), %d bytes, to %s in %.2fs", len(result.files),
                 result.bytes, self.config.url, result.seconds)
        return result

    def _upload(self, job: tuple[str, _Entry | None]) -> tuple[str, _Entry | None, bool]:
        """Upload one file unless its bytes are the ones last synced; (rel, new entry, sent)."""
        rel, old = job
        key = self.config.key(rel)
        try:
            with open(self.home / rel, "rb") as fh:
                st = os.fstat(fh.fileno())  # the version opened, even if replaced meanwhile
                if st.st_size <= _IN_MEMORY:
                    body: Any = fh.read()
                    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
                else:
                    body, md5 = fh, _md5_of(fh)
                    fh.seek(0)
                if old is not None and old.md5 == md5:  # rewritten with the same bytes
                    return rel, _Entry(st.st_size, st.st_mtime_ns, st.st_ino, md5, old.etag), False
                if st.st_size > MAX_OBJECT_BYTES:
                    raise OSError(f"{rel} is larger than {MAX_OBJECT_BYTES} bytes, the most one "
                                  "upload may carry")
                response = self.client().put_object(
                    Bucket=self.config.bucket, Key=key, Body=body, ContentLength=st.st_size
                )
        except FileNotFoundError:
            return rel, None, False  # removed meanwhile: nothing to sync
        except LakeSyncError:
            raise
        except Exception as exc:
            raise self._error(exc, "upload", key) from exc
        etag = str(response.get("ETag") or f'"{md5}"')
        return rel, _Entry(st.st_size, st.st_mtime_ns, st.st_ino, md5, etag), True


# --------------------------------------------------------------------------------- adapter
def pull(settings: Settings) -> SyncResult | None:
    """:meth:`LakeStore.pull` of ``settings``' store; None (nothing done) without one."""
    if not settings.lake_store_url:
        return None
    return LakeStore.from_settings(settings).pull()


def push(settings: Settings) -> SyncResult | None:
    """:meth:`LakeStore.push` of ``settings``' store; None (nothing done) without one."""
    if not settings.lake_store_url:
        return None
    return LakeStore.from_settings(settings).push()


@contextlib.contextmanager
def synced(settings: Settings) -> Iterator[LakeStore | None]:
    """Pull before the block, push after it, failed or not (one stage's run).

    Without a lake store (:attr:`Settings.lake_store_url` empty, the embedded profile) it does
    nothing and yields None. When the block raises, the push still runs; should it fail too, its
    error is logged and the block's exception propagates (a data error stays a data error).

    Yields
    ------
    LakeStore or None
        The store synced, or None.
    """
    if not settings.lake_store_url:
        yield None
        return
    store = LakeStore.from_settings(settings)
    store.pull()
    try:
        yield store
    except BaseException:
        try:
            store.push()
        except Exception as exc:
            log.error("lake sync: push after a failed stage failed too: %s", exc)
        raise
    store.push()
