"""Local mail sources: a Maildir, an mbox file, or a folder of ``*.eml`` files.

Each source has one folder, ``"local"``. Messages are addressed by the sha256 of
their raw bytes, so a key stays the same across runs whatever the files are called
(a Maildir client renames ``new/x`` to ``cur/x:2,S`` when the mail is read). ``scan``
reads one message at a time and keeps only key → location, never the bytes.
"""

from __future__ import annotations

import hashlib
import logging
import mailbox
from collections.abc import Iterator, Sequence
from pathlib import Path

from invoicesync.errors import BadInputError, ConfigError
from invoicesync.mail.source import MailSource
from invoicesync.models import FolderPosition, MailRef

__all__ = ["LOCAL_FOLDER", "EmlFolderSource", "MaildirSource", "MboxSource", "open_local_source"]

LOCAL_FOLDER = "local"

log = logging.getLogger(__name__)


def open_local_source(account: str, path: Path) -> MailSource:
    """Open the local source at ``path``, deciding its kind from what is there.

    A directory with ``cur/`` or ``new/`` is a Maildir; a directory holding ``*.eml``
    files (searched recursively), or nothing yet, is an eml folder; a file starting with
    ``From `` or named ``*.mbox`` is an mbox; a single ``*.eml`` file is a folder of one.
    Anything else, or a missing path, raises ``ConfigError``.
    """
    path = Path(path).expanduser()
    try:
        if path.is_dir():
            if (path / "cur").is_dir() or (path / "new").is_dir():
                return MaildirSource(account, path)
            if not any(path.iterdir()) or any(_eml_files(path)):
                return EmlFolderSource(account, path)
            raise ConfigError(
                f"{path}: neither a Maildir (no cur/ or new/) nor a folder of *.eml files"
            )
        if path.is_file():
            if path.suffix.lower() == ".eml":
                return EmlFolderSource(account, path)
            with path.open("rb") as handle:
                head = handle.read(5)
            if head == b"From " or path.suffix.lower() in (".mbox", ".mbx"):
                return MboxSource(account, path)
            raise ConfigError(f"{path}: not an mbox file (does not start with 'From ')")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read local mail source: {exc}") from exc
    raise ConfigError(f"{path}: local mail source not found")


class _LocalSource:
    """Shared scan/fetch bookkeeping; subclasses list and read their messages."""

    kind = "local"

    #: Local files have no remote endpoint, hence no circuit breaker.
    endpoint: str | None = None

    def __init__(self, account: str, path: Path) -> None:
        self.account = account
        self.path = path
        # key -> where the message was seen by the last scan (a path or an mbox key)
        self._locations: dict[str, Path | str] = {}

    def folders(self) -> Sequence[str]:
        """The one folder of a local source."""
        return (LOCAL_FOLDER,)

    def scan(self, folder: str, position: FolderPosition | None = None) -> Iterator[MailRef]:
        """Yield each distinct message once, keyed by the sha256 of its raw bytes.

        Local files have no positions: every scan lists everything, and the
        pipeline skips the keys it already has.
        """
        self._check_folder(folder)
        locations: dict[str, Path | str] = {}
        for location in self._list():
            try:
                key, size = self._digest(location)
            except FileNotFoundError:
                # Maildir clients move mail from new/ to cur/: it shows up again under its new name.
                continue
            except OSError as exc:
                # One unreadable file must not hide the rest of the mailbox; it is logged instead.
                log.warning("%s: skipping unreadable message %s: %s", self.path, location, exc)
                continue
            if key in locations:  # the same bytes twice are the same message
                continue
            locations[key] = location
            self._locations[key] = location
            yield MailRef(account=self.account, folder=LOCAL_FOLDER, key=key, size=size)
        self._locations = locations

    def fetch(self, ref: MailRef) -> bytes:
        """The raw bytes of a message seen by ``scan``; checked against its key."""
        self._check_folder(ref.folder)
        location = self._locations.get(ref.key)
        if location is None:
            raise BadInputError(
                f"{self.path}: unknown message key {ref.key} (not seen by a scan)", stage="mail"
            )
        try:
            data = self._read(location)
        except OSError as exc:
            raise BadInputError(
                f"{self.path}: cannot read message {location}: {exc}", stage="mail"
            ) from exc
        if hashlib.sha256(data).hexdigest() != ref.key:
            raise BadInputError(
                f"{self.path}: message {location} changed since it was scanned", stage="mail"
            )
        return data

    def position(self, folder: str) -> FolderPosition | None:
        return None

    def after_ingest(self, folder: str, uids: Sequence[int]) -> None:
        """Local files are never changed."""

    def close(self) -> None:
        """Forget the key map (a later ``fetch`` needs a new ``scan``)."""
        self._locations = {}

    def _check_folder(self, folder: str) -> None:
        if folder != LOCAL_FOLDER:
            raise ConfigError(f"{self.path}: a local source has only the folder {LOCAL_FOLDER!r}")

    def _list(self) -> Iterator[Path | str]:
        raise NotImplementedError

    def _read(self, location: Path | str) -> bytes:
        raise NotImplementedError

    def _digest(self, location: Path | str) -> tuple[str, int]:
        raise NotImplementedError


class _FileSource(_LocalSource):
    """A source whose messages are one file each."""

    def _read(self, location: Path | str) -> bytes:
        return Path(location).read_bytes()

    def _digest(self, location: Path | str) -> tuple[str, int]:
        # Streams the file through the hash: a large mail is never held in memory here.
        with Path(location).open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256")
            size = handle.tell()
        return digest.hexdigest(), size

    def _listed(self, paths: Iterator[Path]) -> Iterator[Path | str]:
        try:
            found = sorted(p for p in paths if p.is_file() and not _hidden(p, self.path))
        except OSError as exc:
            raise BadInputError(f"{self.path}: cannot list messages: {exc}", stage="mail") from exc
        yield from found


class MaildirSource(_FileSource):
    """A Maildir: messages are the files in ``cur/`` and ``new/`` (never ``tmp/``)."""

    kind = "maildir"

    def _subdirs(self) -> list[Path]:
        return [sub for sub in (self.path / "cur", self.path / "new") if sub.is_dir()]

    def _list(self) -> Iterator[Path | str]:
        # Own listing rather than mailbox.Maildir: that one returns dot-files such as .gitkeep.
        return self._listed(child for sub in self._subdirs() for child in sub.iterdir())

    def _read(self, location: Path | str) -> bytes:
        try:
            return super()._read(location)
        except FileNotFoundError:
            # Read since the scan: the client moved new/x to cur/x:2,S. Maildir keeps the
            # unique part before ":" so the message can be found again under its new name.
            unique = Path(location).name.split(":", 1)[0]
            for sub in self._subdirs():
                for candidate in sub.iterdir():
                    if candidate.name.split(":", 1)[0] == unique and candidate.is_file():
                        return candidate.read_bytes()
            raise


class EmlFolderSource(_FileSource):
    """A folder (searched recursively) of ``*.eml`` files, or one such file."""

    kind = "eml"

    def _list(self) -> Iterator[Path | str]:
        if self.path.is_file():
            return iter([self.path])
        return self._listed(_eml_files(self.path))


class MboxSource(_LocalSource):
    """An mbox file, read with the stdlib; the mbox is re-read on every scan."""

    kind = "mbox"

    def __init__(self, account: str, path: Path) -> None:
        super().__init__(account, path)
        self._mbox: mailbox.mbox | None = None

    def _list(self) -> Iterator[Path | str]:
        # A fresh reader per scan: mailbox.mbox caches its table of contents forever.
        if self._mbox is not None:
            self._mbox.close()
            self._mbox = None
        try:
            self._mbox = mailbox.mbox(self.path, factory=None, create=False)
            # Passed back to get_bytes unchanged: typeshed says str, the runtime uses int.
            keys = sorted(self._mbox.keys())
        except (OSError, mailbox.Error) as exc:
            raise BadInputError(f"{self.path}: cannot read mbox: {exc}", stage="mail") from exc
        yield from keys

    def _read(self, location: Path | str) -> bytes:
        if self._mbox is None or isinstance(location, Path):
            raise BadInputError(f"{self.path}: fetch before scan", stage="mail")
        try:
            return self._mbox.get_bytes(location)
        except KeyError as exc:
            raise BadInputError(
                f"{self.path}: message {location} vanished from the mbox", stage="mail"
            ) from exc

    def _digest(self, location: Path | str) -> tuple[str, int]:
        data = self._read(location)  # one message at a time
        return hashlib.sha256(data).hexdigest(), len(data)

    def close(self) -> None:
        """Drop the mbox reader and the key map."""
        super().close()
        if self._mbox is not None:
            self._mbox.close()
            self._mbox = None


def _eml_files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.suffix.lower() == ".eml" and not _hidden(p, root))


def _hidden(path: Path, root: Path) -> bool:
    # Dot-files (.gitkeep, editor swap files) and anything under a dot-directory are not mail.
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = Path(path.name)
    return any(part.startswith(".") for part in relative.parts)
