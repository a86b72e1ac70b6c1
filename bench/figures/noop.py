"""Figure 2: a run with nothing new, on mailboxes of ``ctx.noop_sizes`` messages.

Each mailbox is synced first (see the ladder in ``memory.py``), then ``invoicesync run`` is
started 5 times (``memory.NOOP_REPEATS``) as a fresh process — interpreter start, imports,
migrations check, IMAP login, SELECT, ``UID SEARCH``, summary — and the median wall time is
the figure.
Targets: under 1 s at every size, and flat (the largest within 1.1x of the smallest).

The baseline is the least any Python IMAP client can do for "anything new?": a fresh
interpreter that logs in with stdlib imaplib over IMAPS, SELECTs INBOX (read-write, like
invoicesync) and sends one ``UID SEARCH UID <last+1>:*`` (``_MINIMAL_NOOP``).
"""

from __future__ import annotations

from bench.common import Context, Figure, label, median, timed
from bench.figures.memory import ladder
from bench.mailbox import Mailbox


def measure(ctx: Context) -> list[Figure]:
    rungs = ladder(ctx)
    sizes = sorted(ctx.noop_sizes)
    figures = []
    for size in sizes:
        rung = rungs[size]
        transfer = rung.noop_summary.get("transfer", {})
        figures.append(
            Figure(
                f"noop_wall_{label(size)}",
                median(rung.noop_s),
                "s",
                baseline=median(rung.search_s),
                baseline_name="python+imaplib login/SELECT/UID SEARCH",
                target=1.0,
                target_on="value",
                note=f"{size} messages synced in {rung.sync_s:.0f} s before",
                extra={
                    "runs_s": [round(t, 3) for t in rung.noop_s],
                    "peak_rss_mb": round(max(rung.noop_rss_kib) / 1024, 1),
                    "baseline_runs_s": [round(t, 3) for t in rung.search_s],
                    "sync_s": round(rung.sync_s, 2),
                    "sync_was_first_ingest": rung.fresh,
                    "new_messages": rung.noop_summary.get("new_messages"),
                    "bodies_fetched": transfer.get("bodies_fetched"),
                    "mailbox": rung.mailbox,
                },
            )
        )
    if len(sizes) > 1:
        low, high = rungs[sizes[0]], rungs[sizes[-1]]
        figures.append(
            Figure(
                f"noop_{label(high.size)}_vs_{label(low.size)}",
                median(high.noop_s),
                "s",
                baseline=median(low.noop_s),
                baseline_name=f"no-op at {label(low.size)}",
                target=1.1,
                note="flat: the no-op costs the same whatever the mailbox size",
            )
        )
    return figures


def minimal_noop(ctx: Context, box: Mailbox) -> float:
    """Wall seconds of the baseline no-op against ``box`` (a fresh interpreter)."""
    env = {**box.imap_env(), "BENCH_IMAP_AFTER": str(box.count)}
    wall, _ = timed([ctx.python, "-c", _MINIMAL_NOOP], cwd=ctx.work, env=env)
    return wall


#: The baseline client: stdlib only, so its interpreter imports nothing invoicesync would not.
_MINIMAL_NOOP = """
import imaplib, os, ssl, sys
env = os.environ
context = ssl.create_default_context(cafile=env["BENCH_IMAP_CA"])
client = imaplib.IMAP4_SSL(env["BENCH_IMAP_HOST"], int(env["BENCH_IMAP_PORT"]), ssl_context=context)
client.login(env["BENCH_IMAP_USER"], env["BENCH_IMAP_PASSWORD"])
client.select("INBOX")  # read-write, as invoicesync selects (for its post-actions)
_, data = client.uid("SEARCH", "UID %d:*" % (int(env["BENCH_IMAP_AFTER"]) + 1))
client.logout()
# "n+1:*" always matches the newest message: exactly one UID, the last one.
if len((data[0] or b"").split()) != 1:
    sys.exit("unexpected SEARCH answer %r" % data)
"""
