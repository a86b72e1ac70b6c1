"""Figure 1: first ingest of a mailbox, against mirroring it (mbsync) and fetching it whole.

Three clients read the same loopback Dovecot INBOX over IMAPS, one after another, once
Dovecot has indexed it (``BenchServer.warm``):

- ``invoicesync run`` with no API key (``kind = "auto"``: e-invoice XML, else the offline
  heuristics), a fresh SQLite database, link downloads from the loopback invoice site;
- ``mbsync`` (isync) pulling the INBOX into a fresh local Maildir, ``FSync no`` (the figure's
  baseline: bound by transfer, like the issue's reference) and with its default ``FSync yes``
  (in ``extra``);
- stdlib ``imaplib``: ``UID FETCH … (BODY.PEEK[])`` of every message, 200 per command,
  written to /dev/null (``_FULL_FETCH``, in a fresh interpreter).

Also: the bytes invoicesync fetched (its ``bytes_fetched`` counter: every FETCH of message
parts; the BODYSTRUCTURE pass is not counted) against the mailbox's size (sum of RFC822.SIZE).
"""

from __future__ import annotations

import shutil
from typing import Any

from bench.common import (
    Context,
    Figure,
    invoicesync_command,
    last_run_counts,
    median,
    timed,
)
from bench.mailbox import BenchServer, Mailbox, Mix, write_config

BASELINE_REPEATS = 3
MIB = 1024 * 1024
SUMMARY_KEYS = ("status", "seen", "new_messages", "documents", "invoices", "duplicates", "failed")


def measure(ctx: Context) -> list[Figure]:
    if shutil.which("mbsync") is None:
        raise RuntimeError("mbsync is missing: apt-get install -y isync")
    with BenchServer() as server:
        box = server.mailbox(ctx.messages, Mix(pdf_unique=ctx.unique_pdfs))
        print(f"  mailbox: {box.count} messages, {box.bytes / MIB:.0f} MiB, {box.kinds}")
        fetch = [_full_fetch(ctx, box) for _ in range(BASELINE_REPEATS)]
        mirror = [_mbsync(ctx, box, fsync=False) for _ in range(BASELINE_REPEATS)]
        mirror_fsync = _mbsync(ctx, box, fsync=True)
        wall, rss_kib, summary = _first_ingest(ctx, box)
    transfer: dict[str, int] = summary.get("transfer", {})
    extra: dict[str, Any] = {
        "messages": box.count,
        "mailbox_mib": round(box.bytes / MIB, 1),
        "kinds": box.kinds,
        "peak_rss_mb": round(rss_kib / 1024, 1),
        "mbsync_fsync_s": round(mirror_fsync, 2),
        "mbsync_runs_s": [round(t, 2) for t in mirror],
        "imaplib_runs_s": [round(t, 2) for t in fetch],
        "summary": {key: summary.get(key) for key in SUMMARY_KEYS},
        "transfer": transfer,
    }
    return [
        Figure(
            "first_ingest_vs_mbsync",
            wall,
            "s",
            baseline=median(mirror),
            baseline_name="mbsync (FSync no)",
            target=0.5,
            note=f"invoicesync first run, {box.count} msgs; mbsync default FSync: "
            f"{mirror_fsync:.1f} s",
            extra=extra,
        ),
        Figure(
            "first_ingest_vs_imaplib_full_fetch",
            wall,
            "s",
            baseline=median(fetch),
            baseline_name="imaplib BODY.PEEK[] of all",
        ),
        Figure(
            "imap_bytes_fetched_vs_mailbox",
            transfer.get("bytes_fetched", 0) / MIB,
            "MiB",
            baseline=box.bytes / MIB,
            baseline_name="mailbox size",
            note=f"{transfer.get('bodies_fetched', 0)} messages' parts fetched",
        ),
    ]


def _first_ingest(ctx: Context, box: Mailbox) -> tuple[float, int, dict[str, Any]]:
    """Wall seconds, peak RSS (KiB) and the account's summary of a first run."""
    work = ctx.work / "ingest-invoicesync"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = write_config(work / "invoicesync.toml", work=work, accounts=box.account_toml())
    wall, rss = timed(invoicesync_command(ctx, config, "run"), cwd=work)
    [summary] = last_run_counts(work / "invoicesync.db")["accounts"]
    return wall, rss, summary


def _mbsync(ctx: Context, box: Mailbox, *, fsync: bool) -> float:
    """Wall seconds of ``mbsync`` pulling the INBOX into an empty Maildir."""
    work = ctx.work / "ingest-mbsync"
    shutil.rmtree(work, ignore_errors=True)
    (work / "mail").mkdir(parents=True)
    dovecot = box.server.dovecot
    rc = work / "mbsyncrc"
    rc.write_text(
        f"""FSync {"yes" if fsync else "no"}

IMAPAccount bench
Host {dovecot.host}
Port {dovecot.tls_port}
User {box.user}
Pass {box.password}
SSLType IMAPS
CertificateFile {dovecot.ca_file}

IMAPStore remote
Account bench

MaildirStore local
Path {work}/mail/
Inbox {work}/mail/INBOX

Channel bench
Far :remote:
Near :local:
Patterns INBOX
Create Near
Sync Pull
SyncState *
""",
        encoding="utf-8",
    )
    rc.chmod(0o600)
    wall, _ = timed(["mbsync", "-q", "-c", str(rc), "-a"], cwd=work)
    copied = sum(1 for sub in ("cur", "new") for _ in (work / "mail/INBOX" / sub).iterdir())
    if copied != box.count:
        raise RuntimeError(f"mbsync copied {copied} of {box.count} messages")
    return wall


def _full_fetch(ctx: Context, box: Mailbox) -> float:
    """Wall seconds of the imaplib baseline (``_FULL_FETCH``) in a fresh interpreter."""
    env = {**box.imap_env(), "BENCH_IMAP_EXPECT": str(box.count)}
    wall, _ = timed([ctx.python, "-c", _FULL_FETCH], cwd=ctx.work, env=env)
    return wall


#: Every message whole, 200 per command, to /dev/null: stdlib only, nothing else imported.
_FULL_FETCH = """
import imaplib, os, ssl, sys
env = os.environ
context = ssl.create_default_context(cafile=env["BENCH_IMAP_CA"])
client = imaplib.IMAP4_SSL(env["BENCH_IMAP_HOST"], int(env["BENCH_IMAP_PORT"]), ssl_context=context)
client.login(env["BENCH_IMAP_USER"], env["BENCH_IMAP_PASSWORD"])
client.select("INBOX", readonly=True)
_, data = client.uid("SEARCH", "ALL")
uids = (data[0] or b"").split()
fetched = 0
with open(os.devnull, "wb") as sink:
    for start in range(0, len(uids), 200):
        batch = b",".join(uids[start : start + 200]).decode()
        _, answers = client.uid("FETCH", batch, "(BODY.PEEK[])")
        for answer in answers:
            if isinstance(answer, tuple):
                sink.write(answer[1])
                fetched += 1
client.logout()
if fetched != int(env["BENCH_IMAP_EXPECT"]):
    sys.exit("fetched %d messages, expected %s" % (fetched, env["BENCH_IMAP_EXPECT"]))
"""
