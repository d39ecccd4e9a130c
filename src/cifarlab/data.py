"""CIFAR-10 data layer: obtain, verify, parse, split and cache the official binary version.

    cifarlab data prepare --source ../shared/datasets/cifar-10-batches-bin
    python -c "from cifarlab.data import load_split; x, y = load_split('train'); print(x.shape)"

`prepare()` takes a local folder of the extracted files, a local `.tar.gz`, or (by default)
downloads the official archive. Every record file is checked against its published sha256
before it is parsed with numpy (no pickle anywhere). The result is a cache folder of `.npy`
arrays plus `manifest.json` (sha256 of every cached file, the source checksums, the split seed
and the split indices file), written into a temp folder and renamed into place, so a failed or
interrupted run never leaves a partial cache. A second `prepare()` re-hashes the cache and
returns at once.

Splits: `train` (40,000) and `val` (10,000) are a stratified split of the official 50,000
training images (`train_full`); `test` is the official 10,000. The split is a pure function of
the labels and a fixed seed (a keyed hash ranks the images of each class; no RNG whose stream
could change between numpy versions), and its indices are stored with the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.constants import CLASSES, IMAGE_SIZE, NUM_CLASSES
from cifarlab.errors import CifarlabError
from cifarlab.io import sha256_file

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
OFFICIAL_ARCHIVE_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
# Published per-file sums of the members of the official archive.
OFFICIAL_SHA256: Mapping[str, str] = {
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
    "batches.meta.txt": "558e74b5e208382e186da55784b4bac2cd52e558448e1b5800990fdb28ed8033",
}

ENV_SOURCE = "CIFARLAB_DATA_SOURCE"
ENV_CACHE = "CIFARLAB_CACHE"
ARCHIVE_DIR = "cifar-10-batches-bin"  # the folder inside the official archive
CACHE_NAME = "cifar10-v1"  # bump when the cache layout changes
CACHE_FORMAT = "cifarlab-cifar10-cache"
SPLIT_SEED = 2009  # the year CIFAR-10 was published; any fixed value works
VAL_FRACTION = 0.2  # of each class: 50,000 -> 40,000 train / 10,000 val
RECORD_BYTES = 1 + 3 * IMAGE_SIZE * IMAGE_SIZE  # label byte + R, G, B planes

SPLITS = ("train", "val", "test", "train_full")
_CACHE_FILES = (
    "train_full_images.npy",
    "train_full_labels.npy",
    "test_images.npy",
    "test_labels.npy",
    "split_indices.npz",
)
_CHUNK = 1 << 20


class DataError(CifarlabError):
    """Missing, corrupt or unexpected data; the message names the file and the fix."""


@dataclass(frozen=True)
class DataSpec:
    """What a valid source looks like. Tests pass a tiny spec with their own checksums."""

    sha256: Mapping[str, str] = field(default_factory=lambda: dict(OFFICIAL_SHA256))
    records_per_file: int = 10_000
    archive_sha256: str = OFFICIAL_ARCHIVE_SHA256
    url: str = OFFICIAL_URL
    train_files: tuple[str, ...] = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
    test_file: str = "test_batch.bin"
    meta_file: str = "batches.meta.txt"

    @property
    def bin_files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file)


OFFICIAL_SPEC = DataSpec()


# --------------------------------------------------------------------------------------------
# Locations


def default_cache_dir() -> Path:
    """`$CIFARLAB_CACHE`, else the user cache dir (e.g. `~/.cache/cifarlab` on Linux)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cifarlab", appauthor=False))


def dataset_dir(cache_dir: StrPath | None = None) -> Path:
    """The folder that `prepare()` fills inside the cache dir."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / CACHE_NAME


# --------------------------------------------------------------------------------------------
# Hashing and parsing


def parse_records(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of one CIFAR-10 `.bin` file -> images uint8 `(N, 32, 32, 3)`, labels int64 `(N,)`.

    Each record is 1 label byte, then 1,024 red, 1,024 green and 1,024 blue bytes (row-major).
    """
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise DataError(
            f"{name}: {len(data):,} bytes is not a whole number of {RECORD_BYTES}-byte records; "
            "the file is truncated or not a CIFAR-10 binary file. Re-download it or point "
            "--source at a clean copy."
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(
            f"{name}: record {int(bad[0])} has label {int(labels[bad[0]])}, outside 0-"
            f"{NUM_CLASSES - 1} ({bad.size} bad records); the file is corrupt. Re-download it "
            "or point --source at a clean copy."
        )
    # (N, 3, H, W) planes -> (N, H, W, 3), contiguous so the cache stores plain HWC.
    images = records[:, 1:].reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _check_bytes(data: bytes, name: str, origin: str, spec: DataSpec) -> None:
    """Size (record files only), then checksum: a size mismatch gets the more useful message."""
    want = spec.records_per_file * RECORD_BYTES
    if name != spec.meta_file and len(data) != want:
        what = "truncated" if len(data) < want else "larger than expected"
        raise DataError(
            f"{origin}: {name} is {len(data):,} bytes, expected {want:,} "
            f"({spec.records_per_file:,} records of {RECORD_BYTES} bytes); the file is {what}. "
            "Re-download it or point --source at a clean copy of the official files."
        )
    got = hashlib.sha256(data).hexdigest()
    if got != spec.sha256[name]:
        raise DataError(
            f"{origin}: {name} has sha256 {got}, expected {spec.sha256[name]}; the file is "
            "corrupt or not the official one. Re-download it or point --source at a clean copy."
        )


# --------------------------------------------------------------------------------------------
# Reading a source: folder or archive -> {name: bytes}


def _read_folder(folder: Path, spec: DataSpec) -> dict[str, bytes]:
    # Accept the folder itself or its parent (where the archive was extracted).
    if not any((folder / n).exists() for n in spec.bin_files) and (folder / ARCHIVE_DIR).is_dir():
        folder = folder / ARCHIVE_DIR
    present = {p.name for p in folder.iterdir()}
    extra = sorted(n for n in present if n.endswith(".bin") and n not in spec.bin_files)
    if extra:
        raise DataError(
            f"{folder}: unexpected file(s) {', '.join(extra)}; the CIFAR-10 binary version has "
            f"only {', '.join(spec.bin_files)}. Remove the extra file(s) or point --source at a "
            "clean copy."
        )
    missing = [n for n in spec.bin_files if n not in present]
    if missing:
        raise DataError(
            f"{folder}: missing {', '.join(missing)}. Point --source at the folder extracted "
            f"from cifar-10-binary.tar.gz (it holds {', '.join(spec.bin_files)}), or at the "
            "archive itself."
        )
    out: dict[str, bytes] = {}
    for name in (*spec.bin_files, spec.meta_file):
        path = folder / name
        if name == spec.meta_file and not path.exists():
            continue  # the class-name file is optional: the names live in constants.py
        if not path.is_file():
            raise DataError(f"{path} is not a regular file; point --source at a clean copy.")
        data = path.read_bytes()
        _check_bytes(data, name, str(folder), spec)
        out[name] = data
    return out


def _read_archive(archive: Path, spec: DataSpec) -> dict[str, bytes]:
    """Read the expected members of a `.tar.gz` into memory; nothing is extracted to disk.

    Only regular files named `<name>` or `cifar-10-batches-bin/<name>` are read, so links,
    absolute paths and `..` members are never followed (no path traversal).
    """
    wanted = set(spec.bin_files) | {spec.meta_file}
    out: dict[str, bytes] = {}
    fix = "Re-download it, or pass the extracted folder with --source."
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                parts = Path(member.name).parts
                base = parts[-1] if parts else ""
                inside = len(parts) == 1 or (len(parts) == 2 and parts[0] == ARCHIVE_DIR)
                if base.endswith(".bin") and base not in wanted:
                    raise DataError(
                        f"{archive}: unexpected member {member.name}; this is not the official "
                        f"CIFAR-10 binary archive. {fix}"
                    )
                if base not in wanted or not inside or not member.isfile():
                    log.debug("skipping archive member %s", member.name)
                    continue
                if base in out:
                    raise DataError(f"{archive}: member {base} appears twice. {fix}")
                f = tar.extractfile(member)
                if f is None:  # pragma: no cover - isfile() members always have data
                    continue
                data = f.read()
                _check_bytes(data, base, str(archive), spec)
                out[base] = data
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError.
        raise DataError(
            f"{archive}: not a readable gzip-compressed tar archive ({exc}). {fix}"
        ) from exc
    missing = [n for n in spec.bin_files if n not in out]
    if missing:
        raise DataError(f"{archive}: missing member(s) {', '.join(missing)}. {fix}")
    return out


# --------------------------------------------------------------------------------------------
# Download


def download(
    url: str,
    dest: Path,
    sha256: str,
    *,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download `url` into a temp file beside `dest`, verify sha256, then rename to `dest`."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DataError(
                    f"could not download {url} ({reason}). Without network, pass --source PATH "
                    f"(the extracted folder or the .tar.gz) or set {ENV_SOURCE}."
                ) from exc
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                bar = tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                )
                with bar:
                    try:
                        for chunk in iter(lambda: resp.read(_CHUNK), b""):
                            out.write(chunk)
                            h.update(chunk)
                            bar.update(len(chunk))
                    except OSError as exc:  # includes TimeoutError
                        raise DataError(
                            f"download of {url} broke off ({exc}); run the command again, or "
                            f"pass --source PATH or set {ENV_SOURCE}."
                        ) from exc
        got = h.hexdigest()
        if got != sha256:
            raise DataError(
                f"downloaded {url} has sha256 {got}, expected {sha256}; the download is corrupt "
                "or the file changed. Run the command again, or download it yourself and pass "
                "--source PATH."
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------------------------
# Split


def stratified_split(
    labels: np.ndarray, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_indices, val_indices): `round(val_fraction * n_c)` of each class to val.

    Within a class, images are ranked by a keyed BLAKE2 hash of their index, which gives the
    same split on every machine and numpy version.
    """
    key = seed.to_bytes(8, "little", signed=True)

    def _rank(i: int) -> int:
        digest = hashlib.blake2b(i.to_bytes(8, "little"), key=key, digest_size=8).digest()
        return int.from_bytes(digest, "little")

    rank = np.array([_rank(i) for i in range(len(labels))], dtype=np.uint64)
    val_parts = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_val = round(val_fraction * members.size)
        val_parts.append(members[np.argsort(rank[members], kind="stable")[:n_val]])
    val = np.sort(np.concatenate(val_parts)).astype(np.int64)
    train = np.setdiff1d(np.arange(len(labels), dtype=np.int64), val)
    return train, val


# --------------------------------------------------------------------------------------------
# Cache


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with path.open("wb") as f:
        np.save(f, arr, allow_pickle=False)


def _build_cache(
    files: Mapping[str, bytes],
    target: Path,
    spec: DataSpec,
    source_desc: str,
    val_fraction: float,
    seed: int,
) -> None:
    """Parse `files`, write arrays + manifest into a temp dir, rename it to `target`."""
    parts = [parse_records(files[n], n) for n in spec.train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = parse_records(files[spec.test_file], spec.test_file)
    train_idx, val_idx = stratified_split(train_y, val_fraction, seed)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is plain shared data
        _save_npy(tmp / "train_full_images.npy", train_x)
        _save_npy(tmp / "train_full_labels.npy", train_y)
        _save_npy(tmp / "test_images.npy", test_x)
        _save_npy(tmp / "test_labels.npy", test_y)
        with (tmp / "split_indices.npz").open("wb") as f:
            np.savez(f, train=train_idx, val=val_idx)
        manifest = {
            "format": CACHE_FORMAT,
            "version": 1,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source_desc,
            "source_sha256": {n: spec.sha256[n] for n in spec.bin_files},
            "records_per_file": spec.records_per_file,
            "classes": list(CLASSES),
            "counts": {
                "train_full": int(train_y.size),
                "train": int(train_idx.size),
                "val": int(val_idx.size),
                "test": int(test_y.size),
            },
            "split": {
                "seed": seed,
                "val_fraction": val_fraction,
                "method": "stratified, keyed BLAKE2 rank within class",
                "indices_file": "split_indices.npz",
            },
            "files": {n: {"sha256": sha256_file(tmp / n)} for n in _CACHE_FILES},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        # Swap in: an old (invalid) cache is moved aside first so `target` is never partial.
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_manifest(ddir: Path) -> dict[str, Any]:
    path = ddir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(
            f"no prepared CIFAR-10 cache at {ddir}. Run `cifarlab data prepare` (with --source "
            f"PATH or {ENV_SOURCE} when offline), or set {ENV_CACHE} to the cache you prepared."
        ) from exc
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path} is unreadable ({exc}); run `cifarlab data prepare --force` to rebuild it."
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise DataError(
            f"{path} is not a cifarlab cache manifest; run `cifarlab data prepare --force`."
        )
    return manifest


def verify_cache(
    ddir: Path,
    spec: DataSpec = OFFICIAL_SPEC,
    val_fraction: float = VAL_FRACTION,
    seed: int = SPLIT_SEED,
) -> dict[str, Any]:
    """Re-hash every cached file against the manifest; raise DataError on any mismatch."""
    manifest = read_manifest(ddir)
    fix = "run `cifarlab data prepare --force` to rebuild the cache"
    if manifest.get("source_sha256") != {n: spec.sha256[n] for n in spec.bin_files}:
        raise DataError(f"{ddir}: the cache was built from other source files; {fix}.")
    split = manifest.get("split", {})
    if split.get("seed") != seed or split.get("val_fraction") != val_fraction:
        raise DataError(f"{ddir}: the cache has a different split (seed/fraction); {fix}.")
    for name in _CACHE_FILES:
        want = manifest.get("files", {}).get(name, {}).get("sha256")
        path = ddir / name
        if not path.is_file():
            raise DataError(f"{path} is missing; {fix}.")
        if sha256_file(path) != want:
            raise DataError(f"{path} does not match its sha256 in manifest.json; {fix}.")
    return manifest


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Serialise concurrent `prepare()` calls on one cache (several processes may start at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no locking, the rename stays atomic
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_leftovers(ddir: Path) -> None:
    """Delete temp folders and partial downloads of a run that was killed (we hold the lock)."""
    root = ddir.parent
    stale = [*root.glob(f".{ddir.name}.tmp-*"), *root.glob(f".{ddir.name}.old-*")]
    stale += list((root / "downloads").glob(".*.part"))
    for path in stale:
        log.info("removing leftover %s", path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _resolve_source(source: StrPath | None) -> Path | None:
    if source is None:
        env = os.environ.get(ENV_SOURCE)
        if not env:
            return None
        source = env
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data source {path} does not exist. Pass --source (or set {ENV_SOURCE}) to the "
            "folder extracted from cifar-10-binary.tar.gz or to the archive itself."
        )
    return path


def prepare(
    source: StrPath | None = None,
    cache_dir: StrPath | None = None,
    *,
    url: str | None = None,
    force: bool = False,
    progress: bool = True,
    spec: DataSpec = OFFICIAL_SPEC,
    val_fraction: float = VAL_FRACTION,
    seed: int = SPLIT_SEED,
) -> Path:
    """Make sure a verified cache exists; return its folder (`<cache_dir>/cifar10-v1`).

    `source`: folder of the extracted files or a `.tar.gz`; default `$CIFARLAB_DATA_SOURCE`,
    else download `url` (default: the official archive) into `<cache_dir>/downloads/`.
    A valid existing cache is re-hashed and returned without touching the source.
    """
    ddir = dataset_dir(cache_dir)
    with _lock(ddir.parent / ".prepare.lock"):
        _remove_leftovers(ddir)
        if not force and (ddir / "manifest.json").exists():
            try:
                verify_cache(ddir, spec, val_fraction, seed)
                log.info("cache at %s verified", ddir)
                return ddir
            except DataError as exc:
                log.warning("rebuilding cache: %s", exc)

        src = _resolve_source(source)
        if src is None:
            archive = ddir.parent / "downloads" / Path(spec.url if url is None else url).name
            if archive.is_file() and sha256_file(archive) == spec.archive_sha256:
                log.info("using downloaded archive %s", archive)
            else:
                log.info("downloading %s", url or spec.url)
                download(url or spec.url, archive, spec.archive_sha256, progress=progress)
            files = _read_archive(archive, spec)
            desc = f"download {url or spec.url}"
        elif src.is_dir():
            files = _read_folder(src, spec)
            desc = f"folder {src.resolve()}"
        else:
            files = _read_archive(src, spec)
            desc = f"archive {src.resolve()}"
        _build_cache(files, ddir, spec, desc, val_fraction, seed)
        log.info("prepared CIFAR-10 cache at %s", ddir)
        return ddir


# --------------------------------------------------------------------------------------------
# Loading


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError as exc:
        raise DataError(
            f"{path} is missing; run `cifarlab data prepare --force` to rebuild the cache."
        ) from exc
    except ValueError as exc:
        raise DataError(
            f"{path} is unreadable ({exc}); run `cifarlab data prepare --force` to rebuild."
        ) from exc


def load_split_indices(cache_dir: StrPath | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train_indices, val_indices) into the official 50,000 training images."""
    ddir = dataset_dir(cache_dir)
    read_manifest(ddir)
    path = ddir / "split_indices.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["train"], z["val"]
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        raise DataError(
            f"{path} is missing or unreadable; run `cifarlab data prepare --force`."
        ) from exc


def load_split(split: str, cache_dir: StrPath | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 `(N, 32, 32, 3)` and labels int64 `(N,)` of one split from the cache.

    `split` is `train` (40,000), `val` (10,000), `test` (10,000) or `train_full` (50,000).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    ddir = dataset_dir(cache_dir)
    read_manifest(ddir)
    if split == "test":
        return _load_npy(ddir / "test_images.npy"), _load_npy(ddir / "test_labels.npy")
    if split == "train_full":
        return _load_npy(ddir / "train_full_images.npy"), _load_npy(ddir / "train_full_labels.npy")
    train_idx, val_idx = load_split_indices(cache_dir)
    idx = train_idx if split == "train" else val_idx
    # Memory-map the full array so only the selected images are read into memory.
    images = _load_npy(ddir / "train_full_images.npy", mmap=True)
    labels = _load_npy(ddir / "train_full_labels.npy")
    return np.ascontiguousarray(images[idx]), labels[idx]


def describe(cache_dir: StrPath | None = None) -> dict[str, Any]:
    """The manifest of the prepared cache plus its location (for `cifarlab data info`)."""
    ddir = dataset_dir(cache_dir)
    manifest = read_manifest(ddir)
    return {"path": str(ddir), **manifest}


__all__ = [
    "OFFICIAL_SHA256",
    "OFFICIAL_SPEC",
    "OFFICIAL_URL",
    "SPLITS",
    "DataError",
    "DataSpec",
    "dataset_dir",
    "default_cache_dir",
    "describe",
    "download",
    "load_split",
    "load_split_indices",
    "parse_records",
    "prepare",
    "stratified_split",
    "verify_cache",
]
