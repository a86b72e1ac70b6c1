"""Invoice links of one account's mails, through the hardened downloader, one breaker per host."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from invoicesync.pipeline.context import AccountScope, RunContext

if TYPE_CHECKING:
    from invoicesync.fetch.download import LinkResult
    from invoicesync.fetch.http import Session as HttpSession
    from invoicesync.resilience.retry import RetryPolicy

__all__ = ["LinkDownloads"]


class LinkDownloads:
    """``download`` one link; the HTTP session is made at the first link and ``close``d."""

    def __init__(self, ctx: RunContext, scope: AccountScope) -> None:
        self.ctx = ctx
        self.scope = scope
        self._session: HttpSession | None = None
        self._retry: RetryPolicy | None = None

    def download(self, url: str) -> LinkResult:
        """One link through the hardened downloader, under its host's circuit breaker."""
        # requests is imported only by runs that meet a link.
        from invoicesync.fetch.download import download_pdf, link_retry_policy
        from invoicesync.fetch.http import make_session

        links = self.ctx.settings.links
        if self._session is None:
            self._session = make_session(links, self.ctx.settings.timeouts)
            self._retry = link_retry_policy(
                self.ctx.settings.retries, links, cancel=self.ctx.switch.event
            )
        session = self._session
        retry = self._retry
        assert retry is not None
        host = urlsplit(url).hostname or "?"
        return self.ctx.breakers.for_endpoint(f"http://{host}").call(
            lambda: download_pdf(
                url,
                session=session,
                settings=links,
                timeouts=self.ctx.settings.timeouts,
                retry=retry,
                deadline=self.scope.deadline,
            )
        )

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
