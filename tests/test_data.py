"""The data layer on tiny synthetic CIFAR-10 sources the tests build themselves.

    .venv/bin/pytest tests/test_data.py

Each synthetic source has the official layout (five training batches, one test batch, the
class-name file) but 20 records per file, and a `DataSpec` carrying its own checksums, so the
parser, the checksum logic, the split, the cache and every bad-input case run in milliseconds.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cifarlab import data
from cifarlab.cli import main
from cifarlab.constants import CLASSES
from cifarlab.data import DataError, DataSpec, dataset_dir, load_split, prepare

RECORDS = 20  # per file: 100 training images (10 per class), 20 test images
META = ("\n".join(CLASSES) + "\n\n").encode()


def _records(n: int, seed: int, labels: np.ndarray | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    rec = rng.integers(0, 256, size=(n, data.RECORD_BYTES), dtype=np.uint8)
    rec[:, 0] = np.arange(n) % 10 if labels is None else labels
    return rec.tobytes()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _write_source(folder: Path) -> DataSpec:
    """Write a synthetic extracted folder; return the spec with its checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"data_batch_{i}.bin": _records(RECORDS, seed=i) for i in range(1, 6)}
    files["test_batch.bin"] = _records(RECORDS, seed=99)
    files["batches.meta.txt"] = META
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return DataSpec(
        sha256={n: _sha(b) for n, b in files.items()},
        records_per_file=RECORDS,
        archive_sha256="0" * 64,
        url="http://127.0.0.1:9/cifar-10-binary.tar.gz",
    )


def _write_archive(folder: Path, archive: Path, extra: dict[str, bytes] | None = None) -> str:
    """Pack `folder` like the official archive (under cifar-10-batches-bin/); return sha256."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"cifar-10-batches-bin/{path.name}")
        for name, content in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return _sha(archive.read_bytes())


def _assert_no_cache(cache: Path) -> None:
    """Nothing but the lock (and a verified download) may be left after a failed prepare."""
    assert not dataset_dir(cache).exists()
    leftovers = [p.name for p in cache.iterdir()] if cache.exists() else []
    assert set(leftovers) <= {".prepare.lock", "downloads"}, leftovers
    if (cache / "downloads").exists():
        assert not any(p.name.endswith(".part") for p in (cache / "downloads").iterdir())


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, DataSpec]:
    folder = tmp_path / "src" / "cifar-10-batches-bin"
    return folder, _write_source(folder)


@pytest.fixture(autouse=True)
def _no_env_source(monkeypatch: pytest.MonkeyPatch) -> None:
    # CI exports the real source and cache; these tests must only see what they pass.
    monkeypatch.delenv(data.ENV_SOURCE, raising=False)
    monkeypatch.delenv(data.ENV_CACHE, raising=False)


# --------------------------------------------------------------------------------------------
# Parser and split


def test_parse_records_reads_label_then_rgb_planes_row_major() -> None:
    rec = np.zeros((2, data.RECORD_BYTES), dtype=np.uint8)
    rec[:, 0] = [3, 9]
    rec[1, 1 : 1 + 1024] = 10  # red plane
    rec[1, 1 + 1024 : 1 + 2048] = 20  # green plane
    rec[1, 1 + 2048 :] = 30  # blue plane
    rec[1, 1 + 1] = 200  # red, row 0, column 1
    rec[1, 1 + 2048 + 32] = 250  # blue, row 1, column 0
    images, labels = data.parse_records(rec.tobytes(), "x.bin")
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [3, 9] and labels.dtype == np.int64
    assert images[1, 5, 5].tolist() == [10, 20, 30]
    assert images[1, 0, 1, 0] == 200
    assert images[1, 1, 0, 2] == 250
    assert images.flags.c_contiguous


def test_parse_records_rejects_label_out_of_range() -> None:
    raw = bytearray(_records(4, seed=1))
    raw[2 * data.RECORD_BYTES] = 10
    with pytest.raises(DataError, match=r"bad\.bin: record 2 has label 10"):
        data.parse_records(bytes(raw), "bad.bin")


def test_parse_records_rejects_partial_record() -> None:
    with pytest.raises(DataError, match=r"part\.bin.*truncated"):
        data.parse_records(_records(2, seed=1)[:-5], "part.bin")


def test_stratified_split_is_deterministic_and_stratified() -> None:
    labels = np.repeat(np.arange(10), 50)[np.random.default_rng(0).permutation(500)]
    train, val = data.stratified_split(labels, 0.2, seed=7)
    again_train, again_val = data.stratified_split(labels, 0.2, seed=7)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert np.bincount(labels[val]).tolist() == [10] * 10
    assert np.bincount(labels[train]).tolist() == [40] * 10
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(500))
    _, other_val = data.stratified_split(labels, 0.2, seed=8)
    assert not np.array_equal(val, other_val)


# --------------------------------------------------------------------------------------------
# Happy paths


def test_prepare_from_folder_caches_all_splits(source: tuple[Path, DataSpec], tmp_path: Path):
    folder, spec = source
    cache = tmp_path / "cache"
    ddir = prepare(folder, cache, spec=spec, progress=False)
    assert ddir == dataset_dir(cache)

    full_x, full_y = load_split("train_full", cache)
    train_x, train_y = load_split("train", cache)
    val_x, val_y = load_split("val", cache)
    test_x, test_y = load_split("test", cache)
    assert full_x.shape == (100, 32, 32, 3) and full_x.dtype == np.uint8
    assert full_y.dtype == np.int64
    assert (train_x.shape[0], val_x.shape[0], test_x.shape[0]) == (80, 20, 20)
    assert np.bincount(val_y).tolist() == [2] * 10
    assert np.bincount(train_y).tolist() == [8] * 10
    assert test_y.tolist() == (np.arange(RECORDS) % 10).tolist()
    # Split images are the indexed official images, labels travel with them.
    train_idx, val_idx = data.load_split_indices(cache)
    assert np.array_equal(train_x, full_x[train_idx]) and np.array_equal(val_y, full_y[val_idx])
    # The first batch comes first, parsed exactly like parse_records does.
    first_x, first_y = data.parse_records((folder / "data_batch_1.bin").read_bytes(), "b1")
    assert np.array_equal(full_x[:RECORDS], first_x) and np.array_equal(full_y[:RECORDS], first_y)

    manifest = json.loads((ddir / "manifest.json").read_text())
    assert manifest["source_sha256"]["test_batch.bin"] == spec.sha256["test_batch.bin"]
    assert manifest["split"]["seed"] == data.SPLIT_SEED
    assert manifest["split"]["indices_file"] == "split_indices.npz"
    assert manifest["counts"] == {"train_full": 100, "train": 80, "val": 20, "test": 20}
    for name, entry in manifest["files"].items():
        assert data.sha256_file(ddir / name) == entry["sha256"]


def test_second_prepare_only_verifies_the_cache(source: tuple[Path, DataSpec], tmp_path: Path):
    folder, spec = source
    cache = tmp_path / "cache"
    ddir = prepare(folder, cache, spec=spec, progress=False)
    stamp = (ddir / "manifest.json").stat().st_mtime_ns
    # The source is gone: a valid cache must not need it.
    for p in folder.iterdir():
        p.unlink()
    assert prepare(folder, cache, spec=spec, progress=False) == ddir
    assert (ddir / "manifest.json").stat().st_mtime_ns == stamp


def test_prepare_cleans_up_after_a_killed_run(source: tuple[Path, DataSpec], tmp_path: Path):
    folder, spec = source
    cache = tmp_path / "cache"
    (cache / f".{data.CACHE_NAME}.tmp-abc").mkdir(parents=True)
    (cache / f".{data.CACHE_NAME}.tmp-abc" / "train_full_images.npy").write_bytes(b"half")
    (cache / "downloads").mkdir()
    (cache / "downloads" / ".cifar-10-binary.tar.gz.x.part").write_bytes(b"half")
    prepare(folder, cache, spec=spec, progress=False)
    names = sorted(p.name for p in cache.iterdir())
    assert names == [".prepare.lock", data.CACHE_NAME, "downloads"]
    assert list((cache / "downloads").iterdir()) == []


def test_prepare_rebuilds_a_tampered_cache(source: tuple[Path, DataSpec], tmp_path: Path):
    folder, spec = source
    cache = tmp_path / "cache"
    ddir = prepare(folder, cache, spec=spec, progress=False)
    before = load_split("test", cache)[0].copy()
    labels = np.load(ddir / "test_labels.npy")
    np.save(ddir / "test_labels.npy", (labels + 1) % 10)
    with pytest.raises(DataError, match=r"test_labels\.npy does not match"):
        data.verify_cache(ddir, spec)
    prepare(folder, cache, spec=spec, progress=False)
    assert np.array_equal(load_split("test", cache)[1], labels)
    assert np.array_equal(load_split("test", cache)[0], before)


def test_prepare_accepts_parent_folder_and_env_source(
    source: tuple[Path, DataSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, spec = source
    monkeypatch.setenv(data.ENV_SOURCE, str(folder.parent))
    monkeypatch.setenv(data.ENV_CACHE, str(tmp_path / "envcache"))
    ddir = prepare(spec=spec, progress=False)
    assert ddir == tmp_path / "envcache" / data.CACHE_NAME
    assert load_split("train")[0].shape == (80, 32, 32, 3)


def test_prepare_from_targz_matches_folder(source: tuple[Path, DataSpec], tmp_path: Path):
    folder, spec = source
    archive = tmp_path / "cifar-10-binary.tar.gz"
    _write_archive(folder, archive, extra={"cifar-10-batches-bin/readme.html": b"<html/>"})
    prepare(folder, tmp_path / "a", spec=spec, progress=False)
    prepare(archive, tmp_path / "b", spec=spec, progress=False)
    for split in data.SPLITS:
        xa, ya = load_split(split, tmp_path / "a")
        xb, yb = load_split(split, tmp_path / "b")
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_archive_members_outside_the_folder_are_never_extracted(
    source: tuple[Path, DataSpec], tmp_path: Path
) -> None:
    folder, spec = source
    archive = tmp_path / "evil.tar.gz"
    _write_archive(folder, archive, extra={"../../escape.txt": b"x", "/tmp/abs.txt": b"x"})
    prepare(archive, tmp_path / "cache", spec=spec, progress=False)
    assert not (tmp_path.parent / "escape.txt").exists()
    assert not list(tmp_path.rglob("escape.txt"))


# --------------------------------------------------------------------------------------------
# Bad input: one DataError naming the file and the fix, and no partial cache


def _corrupt_flip(folder: Path, spec: DataSpec) -> DataSpec:
    path = folder / "data_batch_1.bin"
    raw = bytearray(path.read_bytes())
    raw[500] ^= 0xFF
    path.write_bytes(bytes(raw))
    return spec


def _missing(folder: Path, spec: DataSpec) -> DataSpec:
    (folder / "data_batch_3.bin").unlink()
    return spec


def _extra(folder: Path, spec: DataSpec) -> DataSpec:
    (folder / "data_batch_6.bin").write_bytes(_records(RECORDS, seed=6))
    return spec


def _truncated(folder: Path, spec: DataSpec) -> DataSpec:
    path = folder / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-100])
    return spec


def _resized(folder: Path, spec: DataSpec) -> DataSpec:
    path = folder / "test_batch.bin"
    path.write_bytes(path.read_bytes() + _records(1, seed=5))
    return spec


def _label_out_of_range(folder: Path, spec: DataSpec) -> DataSpec:
    # Give the file a label 12 *and* its own checksum so the parser, not the sum, must catch it.
    labels = np.arange(RECORDS) % 10
    labels[7] = 12
    content = _records(RECORDS, seed=4, labels=labels)
    (folder / "data_batch_4.bin").write_bytes(content)
    return replace(spec, sha256={**spec.sha256, "data_batch_4.bin": _sha(content)})


def _bad_meta(folder: Path, spec: DataSpec) -> DataSpec:
    (folder / "batches.meta.txt").write_bytes(b"cats\ndogs\n")
    return spec


BAD_FOLDERS = {
    "wrong checksum": (_corrupt_flip, r"data_batch_1\.bin has sha256 .*expected"),
    "missing file": (_missing, r"missing data_batch_3\.bin"),
    "extra file": (_extra, r"unexpected file\(s\) data_batch_6\.bin.*Remove"),
    "truncated file": (_truncated, r"data_batch_2\.bin is .* bytes, expected .*truncated"),
    "resized file": (_resized, r"test_batch\.bin is .* bytes, expected .*larger"),
    "label out of range": (_label_out_of_range, r"data_batch_4\.bin: record 7 has label 12"),
    "wrong class-name file": (_bad_meta, r"batches\.meta\.txt has sha256"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_folder_source_fails_with_one_clear_error(
    case: str, source: tuple[Path, DataSpec], tmp_path: Path
) -> None:
    folder, spec = source
    damage, pattern = BAD_FOLDERS[case]
    spec = damage(folder, spec)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=pattern) as err:
        prepare(folder, cache, spec=spec, progress=False)
    assert "--source" in str(err.value) or "Remove" in str(err.value)
    _assert_no_cache(cache)


@pytest.mark.parametrize("case", ["truncated", "not gzip", "plain tar", "empty"])
def test_corrupt_or_non_gzip_archive_is_rejected(
    case: str, source: tuple[Path, DataSpec], tmp_path: Path
) -> None:
    folder, spec = source
    archive = tmp_path / "cifar-10-binary.tar.gz"
    _write_archive(folder, archive)
    raw = archive.read_bytes()
    if case == "truncated":
        archive.write_bytes(raw[: len(raw) // 2])
    elif case == "not gzip":
        archive.write_bytes(b"<html>404 not found</html>")
    elif case == "plain tar":
        with tarfile.open(archive, "w") as tar:
            tar.add(folder, arcname="cifar-10-batches-bin")
    else:
        archive.write_bytes(b"")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz.*(gzip|missing)") as err:
        prepare(archive, cache, spec=spec, progress=False)
    assert "--source" in str(err.value)
    _assert_no_cache(cache)


def test_archive_with_extra_or_missing_member_is_rejected(
    source: tuple[Path, DataSpec], tmp_path: Path
) -> None:
    folder, spec = source
    extra = tmp_path / "extra.tar.gz"
    _write_archive(folder, extra, extra={"cifar-10-batches-bin/data_batch_7.bin": b"x"})
    with pytest.raises(DataError, match=r"extra\.tar\.gz: unexpected member .*data_batch_7"):
        prepare(extra, tmp_path / "c1", spec=spec, progress=False)
    _assert_no_cache(tmp_path / "c1")

    (folder / "test_batch.bin").unlink()
    short = tmp_path / "short.tar.gz"
    _write_archive(folder, short)
    with pytest.raises(DataError, match=r"short\.tar\.gz: missing member\(s\) test_batch\.bin"):
        prepare(short, tmp_path / "c2", spec=spec, progress=False)
    _assert_no_cache(tmp_path / "c2")


def test_archive_member_with_wrong_checksum_is_rejected(
    source: tuple[Path, DataSpec], tmp_path: Path
) -> None:
    folder, spec = source
    _corrupt_flip(folder, spec)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    _write_archive(folder, archive)
    with pytest.raises(DataError, match=r"tar\.gz: data_batch_1\.bin has sha256"):
        prepare(archive, tmp_path / "cache", spec=spec, progress=False)
    _assert_no_cache(tmp_path / "cache")


def test_missing_source_path_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does-not-exist does not exist.*CIFARLAB_DATA_SOURCE"):
        prepare(tmp_path / "does-not-exist", tmp_path / "cache", progress=False)
    _assert_no_cache(tmp_path / "cache")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_network_and_no_source_says_pass_source(
    source: tuple[Path, DataSpec], tmp_path: Path
) -> None:
    _, spec = source
    url = f"http://127.0.0.1:{_closed_port()}/cifar-10-binary.tar.gz"
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"could not download .*--source.*CIFARLAB_DATA_SOURCE"):
        prepare(None, cache, url=url, spec=spec, progress=False)
    _assert_no_cache(cache)
    assert not (cache / "downloads" / "cifar-10-binary.tar.gz").exists()


def test_load_split_without_cache_or_with_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no prepared CIFAR-10 cache.*cifarlab data prepare"):
        load_split("train", tmp_path)
    with pytest.raises(DataError, match=r"unknown split 'training'"):
        load_split("training", tmp_path)


# --------------------------------------------------------------------------------------------
# Download against a local HTTP server


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_download_verifies_checksum_then_prepares(
    source: tuple[Path, DataSpec], http_root: tuple[Path, str], tmp_path: Path
) -> None:
    folder, spec = source
    root, base = http_root
    archive_sha = _write_archive(folder, root / "cifar-10-binary.tar.gz")
    spec = replace(spec, archive_sha256=archive_sha, url=f"{base}/cifar-10-binary.tar.gz")
    cache = tmp_path / "cache"
    prepare(None, cache, spec=spec, progress=False)
    kept = cache / "downloads" / "cifar-10-binary.tar.gz"
    assert data.sha256_file(kept) == archive_sha
    assert load_split("val", cache)[0].shape == (20, 32, 32, 3)
    # A rebuild reuses the verified download instead of fetching it again.
    (root / "cifar-10-binary.tar.gz").unlink()
    prepare(None, cache, spec=spec, force=True, progress=False)


def test_download_with_checksum_mismatch_leaves_nothing(
    source: tuple[Path, DataSpec], http_root: tuple[Path, str], tmp_path: Path
) -> None:
    folder, spec = source
    root, base = http_root
    _write_archive(folder, root / "cifar-10-binary.tar.gz")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"downloaded .* has sha256 .*expected 0{64}"):
        prepare(None, cache, url=f"{base}/cifar-10-binary.tar.gz", spec=spec, progress=False)
    _assert_no_cache(cache)
    assert list((cache / "downloads").iterdir()) == []


def test_download_http_error_names_url(
    source: tuple[Path, DataSpec], http_root: tuple[Path, str], tmp_path: Path
) -> None:
    _, spec = source
    _, base = http_root
    with pytest.raises(DataError, match=r"could not download .*/missing\.tar\.gz"):
        prepare(None, tmp_path / "cache", url=f"{base}/missing.tar.gz", spec=spec, progress=False)


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_prepare_bad_source_exits_2_with_one_line(
    source: tuple[Path, DataSpec], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = source
    # The synthetic files are far smaller than the official ones: a clear size error.
    code = main(["data", "prepare", "--source", str(folder), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "data_batch_1.bin" in err and "expected 30,730,000" in err
    _assert_no_cache(tmp_path / "c")


def test_cli_info_reports_missing_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["data", "info", "--cache-dir", str(tmp_path)]) == 2
    assert "cifarlab data prepare" in capsys.readouterr().err


def test_cli_info_prints_manifest(
    source: tuple[Path, DataSpec], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, spec = source
    prepare(folder, tmp_path, spec=spec, progress=False)
    assert main(["data", "info", "--cache-dir", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["val"] == 20 and info["path"].endswith(data.CACHE_NAME)
