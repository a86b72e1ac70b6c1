"""Reading one stored document: its bytes parsed in a worker, the model asked from here.

The worker (``extract.local``) runs the local extractors and prepares the model's
input under ``timeouts.extract_document`` and ``extract.memory_mb``; a hung, huge or
crashing document costs its own limit and fails alone. The model request waits on
the network, so it runs in the caller's thread, from what the worker prepared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from invoicesync.config import Settings
from invoicesync.extract.local import LocalPlan, prepare_model_input, read_document
from invoicesync.extract.model_input import ModelInput
from invoicesync.extract.select import ExtractorSelection
from invoicesync.models import DocumentType, Invoice
from invoicesync.resilience.processes import WorkerPool
from invoicesync.resilience.timeouts import Deadline
from invoicesync.store.files import DocumentFiles
from invoicesync.store.schema import Document

if TYPE_CHECKING:
    from invoicesync.extract.openai import Reading

__all__ = ["DocumentReader"]


class DocumentReader:
    """``read`` one document with ``extractors``, parsing in ``pool``'s workers."""

    def __init__(
        self,
        settings: Settings,
        extractors: ExtractorSelection,
        pool: WorkerPool,
        files: DocumentFiles,
    ) -> None:
        self.extractors = extractors
        self.pool = pool
        self.files = files
        self.timeout = settings.timeouts.extract_document

    def read(
        self,
        document: Document,
        *,
        model: bool,
        deadline: Deadline,
        check: Callable[[], None],
    ) -> Invoice | None:
        """The document's invoice, or None when it is not one.

        ``model=False`` leaves the model out (it refused us this run). ``check``
        is called while a worker works; what it raises (a stop) kills the worker.
        """
        plan = self.extractors.plan(document.kind, model=model)
        path = str(self.files.root / document.path)
        what = f"document {document.sha256[:12]}"
        local = self.pool.call(
            read_document,
            path,
            document.filename,
            plan,
            timeout=self.timeout,
            what=what,
            check=check,
        )
        if local.invoice is not None or local.model_input is None:
            return local.invoice
        invoice = self._ask_model(document, path, plan, local.model_input, deadline, check)
        if invoice is None and local.error is not None:
            raise local.error  # nothing read it, and a layer of it is broken
        if invoice is None or invoice.document_type is DocumentType.OTHER:
            return None
        return invoice

    def _ask_model(
        self,
        document: Document,
        path: str,
        plan: LocalPlan,
        first: ModelInput,
        deadline: Deadline,
        check: Callable[[], None],
    ) -> Invoice | None:
        model = self.extractors.model
        assert model is not None

        def prepare(pages: int) -> ModelInput:
            return self.pool.call(
                prepare_model_input,
                path,
                pages,
                plan.scanned_pdfs,
                timeout=self.timeout,
                what=f"document {document.sha256[:12]}",
                check=check,
            )

        def read() -> Reading:
            assert model is not None
            return model.read_input(
                prepare, first=first, filename=document.filename, deadline=deadline
            )

        cache = self.extractors.cache
        if cache is None:
            return read().invoice
        return cache.extract_with(document.sha256, read, deadline=deadline)
