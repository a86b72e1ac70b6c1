"""ZUGFeRD 1.0 (``rsm:CrossIndustryDocument``) → ``Invoice``.

ZUGFeRD 1.0 is the CII tree of D16B's predecessor: same structure, older element
names (``HeaderExchangedDocument``, ``ApplicableSupplyChainTradeSettlement``,
``ApplicablePercent`` …) and namespaces. Only those names live here; the mapping
itself is ``cii.map_cross_industry``.
"""

from __future__ import annotations

from lxml import etree

from invoicesync.extract.cii import Dialect, map_cross_industry
from invoicesync.models import Invoice

__all__ = ["ZF1", "ZF1_ROOT", "map_zugferd1"]

_RSM = "urn:ferd:CrossIndustryDocument:invoice:1p0"
ZF1_ROOT = f"{{{_RSM}}}CrossIndustryDocument"

ZF1 = Dialect(
    syntax="ZUGFeRD1",
    namespaces={
        "rsm": _RSM,
        "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:12",
        "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:15",
    },
    context="rsm:SpecifiedExchangedDocumentContext",
    header="rsm:HeaderExchangedDocument",
    transaction="rsm:SpecifiedSupplyChainTradeTransaction",
    agreement="ram:ApplicableSupplyChainTradeAgreement",
    settlement="ram:ApplicableSupplyChainTradeSettlement",
    summation="ram:SpecifiedTradeSettlementMonetarySummation",
    rate="ram:ApplicablePercent",
    order_id="ram:BuyerOrderReferencedDocument/ram:ID",
    line_agreement="ram:SpecifiedSupplyChainTradeAgreement",
    line_delivery="ram:SpecifiedSupplyChainTradeDelivery",
    line_settlement="ram:SpecifiedSupplyChainTradeSettlement",
    line_summation="ram:SpecifiedTradeSettlementMonetarySummation",
)


def map_zugferd1(root: etree._Element) -> Invoice:
    """Map a ZUGFeRD 1.0 ``rsm:CrossIndustryDocument`` root element."""
    return map_cross_industry(root, ZF1)
