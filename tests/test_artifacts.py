import hashlib
import os

from domainlm.io import atomic_write_text, file_digest


def test_file_digest_is_sha256_and_follows_changes(tmp_path):
    path = tmp_path / "corpus.txt"
    atomic_write_text(path, "first version\n")
    assert file_digest(path) == hashlib.sha256(b"first version\n").hexdigest()
    assert file_digest(path) == file_digest(str(path))  # remembered, same answer
    path.write_text("other version\n")  # same size, new content
    os.utime(path, ns=(1, 1))  # a different modification time, as any rewrite has
    assert file_digest(path) == hashlib.sha256(b"other version\n").hexdigest()


def test_atomic_write_leaves_a_readable_file_and_no_temporaries(tmp_path):
    path = tmp_path / "sub" / "report.md"
    atomic_write_text(path, "x")
    assert path.read_text() == "x" and path.stat().st_mode & 0o044 == 0o044
    assert [p.name for p in path.parent.iterdir()] == ["report.md"]
