"""Local mail sources: Maildir, mbox and *.eml folders, content-addressed keys, errors."""

from __future__ import annotations

import hashlib
import io
import logging
import mailbox
from email.message import EmailMessage
from pathlib import Path

import pytest

from invoicesync.errors import BadInputError, ConfigError
from invoicesync.mail.local import (
    LOCAL_FOLDER,
    EmlFolderSource,
    MaildirSource,
    MboxSource,
    open_local_source,
)
from invoicesync.mail.source import MailSource
from invoicesync.models import MailRef


def _raw(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "billing@vendor.example"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@vendor.example>"
    msg.set_content(f"Body of {subject}\n")
    return msg.as_bytes()


ONE, TWO, THREE = _raw("one"), _raw("two"), _raw("three")


def _key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _maildir(root: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "cur" / "1700000001.M1P1.host:2,S").write_bytes(ONE)
    (root / "new" / "1700000002.M2P1.host").write_bytes(TWO)
    (root / "tmp" / "1700000003.M3P1.host").write_bytes(THREE)  # still being delivered
    (root / "new" / ".gitkeep").write_bytes(b"")
    (root / "cur" / ".1700000004.swp").write_bytes(b"editor junk")
    return root


def _scan(source: MailSource) -> list[MailRef]:
    return list(source.scan(LOCAL_FOLDER))


# ------------------------------------------------------------------- Maildir


def test_maildir_lists_cur_and_new_and_skips_dot_files_and_tmp(tmp_path: Path) -> None:
    """A Maildir yields the mails of cur/ and new/; .gitkeep, dot-files and tmp/ are skipped."""
    source = open_local_source("acme", _maildir(tmp_path / "Maildir"))
    assert isinstance(source, MaildirSource)
    assert source.folders() == ("local",)
    refs = _scan(source)
    assert [ref.key for ref in refs] == [_key(ONE), _key(TWO)]
    assert refs[0] == MailRef(account="acme", folder="local", key=_key(ONE), size=len(ONE))
    assert [source.fetch(ref) for ref in refs] == [ONE, TWO]


def test_maildir_with_only_new_is_recognised(tmp_path: Path) -> None:
    """A directory with just new/ is already a Maildir."""
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "m1").write_bytes(ONE)
    source = open_local_source("acme", tmp_path)
    assert isinstance(source, MaildirSource)
    assert [ref.key for ref in _scan(source)] == [_key(ONE)]


def test_identical_messages_are_listed_once(tmp_path: Path) -> None:
    """The same bytes stored twice are one message (one key)."""
    root = _maildir(tmp_path)
    (root / "cur" / "copy:2,S").write_bytes(TWO)
    assert [ref.key for ref in _scan(open_local_source("acme", root))] == [_key(ONE), _key(TWO)]


def test_keys_are_stable_across_scans_and_renames(tmp_path: Path) -> None:
    """Keys are the content hash: the same across scans, sources and file names."""
    root = _maildir(tmp_path)
    first = {ref.key for ref in _scan(open_local_source("acme", root))}
    source = open_local_source("acme", root)
    assert {ref.key for ref in _scan(source)} == first
    # A mail client marks the mail as read: new/x moves to cur/x:2,S.
    (root / "new" / "1700000002.M2P1.host").rename(root / "cur" / "1700000002.M2P1.host:2,RS")
    (root / "cur" / "1700000001.M1P1.host:2,S").rename(root / "cur" / "renamed")
    assert {ref.key for ref in _scan(source)} == first
    assert {ref.key for ref in _scan(open_local_source("other", root))} == first


def test_file_vanishing_during_scan_is_skipped(tmp_path: Path) -> None:
    """A file moved away while the scan runs is skipped, not an error."""
    root = _maildir(tmp_path)
    scan = open_local_source("acme", root).scan(LOCAL_FOLDER)
    first = next(scan)
    (root / "new" / "1700000002.M2P1.host").unlink()
    assert first.key == _key(ONE)
    assert list(scan) == []


def test_unreadable_file_is_skipped_during_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One unreadable message is logged and skipped; the others are still listed."""
    root = _maildir(tmp_path)
    real_digest = hashlib.file_digest

    # chmod 000 does not stop root (CI containers), so the read error is injected instead.
    def digest(handle: io.BufferedReader, name: str) -> hashlib._Hash:
        if str(handle.name).endswith("M1P1.host:2,S"):
            raise PermissionError(13, "Permission denied", handle.name)
        return real_digest(handle, name)

    monkeypatch.setattr(hashlib, "file_digest", digest)
    with caplog.at_level(logging.WARNING, logger="invoicesync.mail.local"):
        assert [ref.key for ref in _scan(open_local_source("acme", root))] == [_key(TWO)]
    assert "Permission denied" in caplog.text


# --------------------------------------------------------------------- fetch


def test_fetch_of_a_vanished_file_is_bad_input(tmp_path: Path) -> None:
    """A file deleted between scan and fetch raises BadInputError naming it."""
    root = _maildir(tmp_path)
    source = open_local_source("acme", root)
    [ref, _] = _scan(source)
    (root / "cur" / "1700000001.M1P1.host:2,S").unlink()
    with pytest.raises(BadInputError, match="cannot read message"):
        source.fetch(ref)


def test_fetch_finds_a_maildir_message_moved_to_cur(tmp_path: Path) -> None:
    """A mail moved from new/ to cur/ (marked read) after the scan is still fetched."""
    root = _maildir(tmp_path)
    source = open_local_source("acme", root)
    [_, ref] = _scan(source)
    (root / "new" / "1700000002.M2P1.host").rename(root / "cur" / "1700000002.M2P1.host:2,S")
    assert source.fetch(ref) == TWO


def test_fetch_of_a_changed_file_is_bad_input(tmp_path: Path) -> None:
    """A file rewritten after the scan no longer matches its key and is refused."""
    root = _maildir(tmp_path)
    source = open_local_source("acme", root)
    [ref, _] = _scan(source)
    (root / "cur" / "1700000001.M1P1.host:2,S").write_bytes(THREE)
    with pytest.raises(BadInputError, match="changed since it was scanned"):
        source.fetch(ref)


def test_fetch_of_an_unknown_key_is_bad_input(tmp_path: Path) -> None:
    """Fetching a key no scan has seen raises a project error."""
    source = open_local_source("acme", _maildir(tmp_path))
    with pytest.raises(BadInputError, match="unknown message key"):
        source.fetch(MailRef(account="acme", folder="local", key="0" * 64))


def test_close_forgets_the_scan(tmp_path: Path) -> None:
    """After close a fetch needs a new scan."""
    source = open_local_source("acme", _maildir(tmp_path))
    [ref, _] = _scan(source)
    source.close()
    with pytest.raises(BadInputError):
        source.fetch(ref)


def test_other_folder_names_are_config_errors(tmp_path: Path) -> None:
    """A local source has only the folder "local"."""
    source = open_local_source("acme", _maildir(tmp_path))
    with pytest.raises(ConfigError, match="only the folder"):
        list(source.scan("INBOX"))


# ---------------------------------------------------------------------- mbox


def _mbox(path: Path, *messages: bytes) -> Path:
    box = mailbox.mbox(path)
    for data in messages:
        box.add(data)
    box.close()
    return path


def test_mbox_messages_are_listed_and_fetched(tmp_path: Path) -> None:
    """An mbox file yields each message; fetch returns its bytes, matching the key."""
    source = open_local_source("acme", _mbox(tmp_path / "archive", ONE, TWO, ONE))
    assert isinstance(source, MboxSource)
    refs = _scan(source)
    assert len(refs) == 2  # the third message repeats the first
    fetched = [source.fetch(ref) for ref in refs]
    assert [_key(data) for data in fetched] == [ref.key for ref in refs]
    assert [ref.size for ref in refs] == [len(data) for data in fetched]
    assert b"Subject: one" in fetched[0] and b"Subject: two" in fetched[1]
    source.close()


def test_mbox_keys_are_stable_and_new_mail_is_seen(tmp_path: Path) -> None:
    """A rescan sees appended mail and keeps the keys of the old messages."""
    path = _mbox(tmp_path / "inbox.mbox", ONE)
    source = open_local_source("acme", path)
    before = [ref.key for ref in _scan(source)]
    _mbox(path, TWO)  # appends
    after = [ref.key for ref in _scan(source)]
    assert after[: len(before)] == before and len(after) == 2
    source.close()


def test_empty_file_named_mbox_is_an_empty_mbox(tmp_path: Path) -> None:
    """An empty *.mbox file is an mbox without messages."""
    (tmp_path / "empty.mbox").write_bytes(b"")
    source = open_local_source("acme", tmp_path / "empty.mbox")
    assert _scan(source) == []
    source.close()


# ---------------------------------------------------------------- eml folder


def test_eml_folder_is_read_recursively_in_order(tmp_path: Path) -> None:
    """A folder of *.eml files is searched recursively, sorted; other and dot-files are skipped."""
    (tmp_path / "2024" / "03").mkdir(parents=True)
    (tmp_path / "b.eml").write_bytes(TWO)
    (tmp_path / "a.EML").write_bytes(ONE)
    (tmp_path / "2024" / "03" / "c.eml").write_bytes(THREE)
    (tmp_path / "notes.txt").write_bytes(b"not a mail")
    (tmp_path / ".hidden.eml").write_bytes(b"x")
    (tmp_path / ".trash").mkdir()
    (tmp_path / ".trash" / "old.eml").write_bytes(b"y")
    source = open_local_source("acme", tmp_path)
    assert isinstance(source, EmlFolderSource)
    refs = _scan(source)
    assert [source.fetch(ref) for ref in refs] == [THREE, ONE, TWO]


def test_single_eml_file_is_a_source_of_one(tmp_path: Path) -> None:
    """A path to one *.eml file is a source with that one message."""
    (tmp_path / "one.eml").write_bytes(ONE)
    source = open_local_source("acme", tmp_path / "one.eml")
    assert [source.fetch(ref) for ref in _scan(source)] == [ONE]


def test_empty_directory_is_an_empty_eml_folder(tmp_path: Path) -> None:
    """An empty directory is a (so far empty) folder of *.eml files."""
    assert _scan(open_local_source("acme", tmp_path)) == []


# -------------------------------------------------------------- misconfigured


def test_missing_path_is_config_error(tmp_path: Path) -> None:
    """A path that does not exist raises ConfigError naming it."""
    missing = tmp_path / "no-such-maildir"
    with pytest.raises(ConfigError, match="no-such-maildir"):
        open_local_source("acme", missing)


def test_unknown_kinds_are_config_errors(tmp_path: Path) -> None:
    """A file that is no mbox, or a folder with neither Maildir dirs nor *.eml, is refused."""
    (tmp_path / "notes.txt").write_bytes(b"hello")
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        open_local_source("acme", tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match="neither a Maildir"):
        open_local_source("acme", tmp_path)
