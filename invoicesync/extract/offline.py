"""Heuristic extractor over the PDF text layer, used when no OpenAI key is configured.

``parse_text`` is a pure function of the text; ``OfflineExtractor`` only adds PDF reading.
Each field has a table of label patterns (EN, DE, FR, NL), tried tier by tier. A value is
taken after its label on the same line, else before it (pypdf often emits a value ahead of
its label), else on the next line, else, for amounts, from the last row of a number table
whose header ends with the label. Fields that cannot be found stay ``None``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter, deque
from collections.abc import Callable, Sequence
from decimal import Decimal
from itertools import takewhile
from typing import TypeVar

from invoicesync.extract.pdf import pdf_text
from invoicesync.extract.review import check_gross_total
from invoicesync.models import DocumentType, Invoice, Party, Provenance
from invoicesync.resilience.timeouts import Deadline

__all__ = ["OfflineExtractor", "detect_currency", "parse_amount", "parse_date", "parse_text"]

T = TypeVar("T")
Lines = Sequence[str]
MAX_PAGES = 10  # header and totals of an invoice come early; bounds the work on huge PDFs
#: Only this much of a text layer is read (the corpus's longest text has 4,200 characters).
MAX_TEXT_CHARS = 200_000
#: Longer lines are cut to this length before matching (the corpus's longest has 183).
MAX_LINE_CHARS = 2_000
# A label repeated all over one line: only its first and last few hits are looked at, so a
# line costs at most this many value searches (each reads the rest of the line).
_MAX_HITS_PER_LINE = 8


# In label patterns ``\b`` is a *letter* boundary: pypdf glues values to labels ("2015Invoice").
_LETTER_BOUNDARY = r"(?:(?<![^\W\d_])(?=[^\W\d_])|(?<=[^\W\d_])(?![^\W\d_]))"


def _rx(*alternatives: str) -> re.Pattern[str]:
    pattern = "|".join(f"(?:{a})" for a in alternatives).replace(r"\b", _LETTER_BOUNDARY)
    return re.compile(pattern, re.IGNORECASE | re.MULTILINE)


# ------------------------------------------------------------- amounts, dates, currency

_AMOUNT = re.compile(
    r"(?<![\w.,\-−])(?P<sign>[-−])?"
    r"(?P<num>\d{1,3}(?:[.,']\d{3}){1,6}(?:[.,]\d{1,4})?"  # 1.234,56  1,234.56  1'234.56
    r"|\d{1,3}(?:[ \u00a0\u202f]\d{3}){1,6},\d{1,4}"  # 1 234,56: space groups only before a comma
    r"|\d+(?:[.,]\d{1,4})?)"
    r"(?!\d|[.,]\d)"
)
# Never starting inside a run of digits: from each of its digits the run was read again.
_PERCENT = re.compile(r"[-−]?(?<!\d)\d+(?:[.,]\d+)?\s?%")
_MONTH_NAMES = (  # EN, DE, FR, NL names and abbreviations of each month
    "january jan januar jänner janvier janv januari", "february feb februar février févr fév",
    "march mar märz maerz mrz mars maart mrt", "april apr avril avr", "may mai mei",
    "june jun juni juin", "july jul juli juillet juil", "august aug août aout augustus",
    "september sep sept septembre", "october oct oktober okt octobre", "november nov novembre",
    "december dec dezember dez décembre déc",
)  # fmt: skip
_MONTHS = {name: n for n, names in enumerate(_MONTH_NAMES, start=1) for name in names.split()}
# re.IGNORECASE also matches these four to ASCII letters, which ``str.lower`` does not map.
_ASCII_FOLD = str.maketrans({"İ": "i", "ı": "i", "ſ": "s", "\u212a": "k"})
_MONTH = "|".join(sorted(map(re.escape, _MONTHS), key=len, reverse=True))
_DATE = re.compile(
    r"(?<![\d.,/-])(?P<iy>\d{4})-(?P<im>\d{1,2})-(?P<id>\d{1,2})(?!\d)"
    r"|(?<![\d.,/-])(?P<a>\d{1,2})(?P<sep>[./-])(?P<b>\d{1,2})(?P=sep)(?P<y>\d{4}|\d{2})(?![.,]?\d)"
    rf"|(?<!\d)(?P<td>\d{{1,2}})(?:er|st|nd|rd|th)?\.?\s*(?P<tm>{_MONTH})\b\.?,?\s+(?P<ty>\d{{4}})"
    rf"|\b(?P<um>{_MONTH})\b\.?\s+(?P<ud>\d{{1,2}})(?:st|nd|rd|th)?\s*+,?\s*+(?P<uy>\d{{4}})(?!\d)",
    re.IGNORECASE,
)
_ISO_CODES = "EUR|USD|GBP|INR|CHF|JPY|CAD|AUD|SEK|NOK|DKK|PLN|CZK|HUF|CNY"
_CURRENCY = re.compile(
    rf"(?<![A-Za-z])(?:{_ISO_CODES})(?![A-Za-z])"
    r"|[€$£₹]|(?i:\bRs\.?(?=\s?-?\d)|\beuros?\b)|(?i:\bUS\s+dollars?\b)"
)
_CURRENCY_LABEL = re.compile(
    rf"(?i:währung|currency|devise|valuta|beträge\s+in|amounts?\s+in)\s*+:?\s*+({_ISO_CODES})\b"
)
_SYMBOLS = {"€": "EUR", "$": "USD", "£": "GBP", "₹": "INR", "rs": "INR", "euro": "EUR", "us": "USD"}


def _to_decimal(sign: str | None, num: str) -> Decimal:
    seps = [(i, c) for i, c in enumerate(num) if not c.isdigit()]
    if seps:
        k, last = seps[-1]
        decimals = len(num) - k - 1
        # "1.234" is a thousands group; "1,5", "1.234,56" and "1,234.567" end in decimals.
        if last in ".," and (decimals != 3 or any(c != last for _, c in seps[:-1])):
            num = re.sub(r"\D", "", num[:k]) + "." + num[k + 1 :]
        else:
            num = re.sub(r"\D", "", num)
    value = Decimal(num)
    return -value if sign else value


def _amounts(text: str, money: bool = False) -> list[Decimal]:
    """Amounts in ``text``, not dates or percentages; ``money``: with decimals or a currency."""
    text = _PERCENT.sub(" ", _DATE.sub(" ", text))
    return [
        _to_decimal(m["sign"], m["num"])
        for m in _AMOUNT.finditer(text)
        if not money
        or re.search(r"[.,]\d\d$", m["num"])
        or _CURRENCY.search(text[max(m.start() - 4, 0) : m.end() + 4])
    ]


def parse_amount(text: str) -> Decimal | None:
    """The first amount in ``text`` (EU ``1.234,56``, US ``1,234.56``, FR ``1 234,56``)."""
    amounts = _amounts(text)
    return amounts[0] if amounts else None


def _to_date(m: re.Match[str], month_first: bool) -> dt.date | None:
    if m["iy"]:
        y, mo, d = int(m["iy"]), int(m["im"]), int(m["id"])
    elif m["a"]:
        d, mo, y = int(m["a"]), int(m["b"]), int(m["y"])
        if (month_first and m["sep"] == "/" and d <= 12) or mo > 12:
            d, mo = mo, d
        y += 2000 if y < 70 else 1900 if y < 100 else 0
    elif m["td"]:
        y, mo, d = int(m["ty"]), _month(m["tm"]), int(m["td"])
    else:
        y, mo, d = int(m["uy"]), _month(m["um"]), int(m["ud"])
    try:
        return dt.date(y, mo, d) if 1970 <= y < 2100 else None
    except ValueError:
        return None


def _month(name: str) -> int:
    """The number of a month name as ``_DATE`` matched it ("Maı" and "Auguſt" included)."""
    folded = name.translate(_ASCII_FOLD).lower()
    if folded in _MONTHS:
        return _MONTHS[folded]
    # Any other spelling the case-insensitive match allowed: ask the regex engine itself.
    return next(n for key, n in _MONTHS.items() if re.fullmatch(re.escape(key), name, re.I))


def _dates(text: str, *, month_first: bool = False) -> list[dt.date]:
    """Every valid date in ``text``; ``month_first`` reads ``03/08/2014`` as March 8."""
    dates = (_to_date(m, month_first) for m in _DATE.finditer(text))
    return [d for d in dates if d is not None]


def parse_date(text: str, *, month_first: bool = False) -> dt.date | None:
    """The first date in ``text`` (ISO, ``05.03.2018``, ``3 août 2015``, ``August 3, 2014`` …)."""
    dates = _dates(text, month_first=month_first)
    return dates[0] if dates else None


def detect_currency(text: str) -> str | None:
    """ISO 4217 code: a labelled one ("Währung: EUR"), else the most frequent code or symbol."""
    if labelled := _CURRENCY_LABEL.search(text):
        return labelled[1]
    found = [m[0].translate(_ASCII_FOLD) for m in _CURRENCY.finditer(text)]
    codes = [next((c for s, c in _SYMBOLS.items() if f.lower().startswith(s)), f) for f in found]
    return Counter(codes).most_common(1)[0][0] if codes else None


# ----------------------------------------------------------------------- label tables
# One entry per alternative; a field's tiers are tried in order (the first tier with a value
# wins). In these patterns ``\b`` is a letter boundary (see ``_rx``).
# fmt: off
_INVOICE_WORD = _rx(r"\binvoice", r"(?<!be)rechnung", r"\bfactur", r"\bfactuur", r"\bfattur",
                    r"\bbill\b", r"\bcredit\s*not[ea]", r"gutschrift", r"\bavoir\s*(?:n[°º]|no\b)")
_CREDIT_NOTE = _rx(r"\bcredit\s*note\b", r"\bgutschrift\b", r"\bcredit\s*nota\b|\bcreditnota\b",
                   r"facture\s+d['’]avoir|^\s*avoir\b|\bavoir\s*(?:n[°º]|no\b|#)")
_SELF_BILLED = _rx(r"selbst\s*ausgestellte\s+rechnung", r"self[-\s]*billed", r"autofacturation")
_CORRECTED = _rx(r"rechnungs?-?\s*korrektur|korrekturrechnung", r"corrected\s+invoice",
                 r"facture\s+rectificative")
_NUMBER_TIERS = (
    _rx(r"\binvoice\s*(?:no\b\.?|number|num\b\.?|nr\b\.?|#|id\b)",
        r"(?<!be)rechnungs?[-\s]*(?:nr\b\.?|nummer|no\b\.?)",
        r"\bfacture\s*(?:n\s*[°º]|no\b\.?|num(?:éro|ero)?\b\.?|#)",
        r"\b(?:n[°º]|num[ée]ro)\s*(?:de\s+)?facture",
        r"\bfactuur\s*(?:nummer|nr\b\.?|no\b\.?)", r"\b(?:factura|fattura)\s*(?:n[°º.]|no\b\.?|#)",
        r"(?:credit\s*note|gutschrift|creditnota|avoir)\s*(?:no\b|number|nr\b|nummer|n[°º]|#)\.?",
        r"\bbill\s*(?:no\b\.?|number|#)"),
    _rx(r"\bbeleg[-\s]*(?:nr\b\.?|nummer|no\b\.?)|\bdocument\s*(?:no\b\.?|number|#)",
        # "Handelsrechnung (380) 05.03.2018 Nr. 471102", but not "Rechnung gemäß Bestellung Nr. 7"
        r"(?:rechnung|invoice|facture|factuur|gutschrift|credit\s*note|korrektur)\w*"
        r"(?:(?!bestell|order|auftrag|kunde|customer|client|klant|commande|vertrag|contract|liefer)"
        r"[^\n]){0,60}?(?:\b(?:nr|no|nummer|number)\b|\bn[°º])\.?",
        r"\b(?:invoice|rechnung|facture|factuur|factura|fattura)\b"),  # "Facture FA-2017-0010"
)
_DATE_TIERS = (
    _rx(r"\binvoice\s*date|\bdate\s+of\s+(?:the\s+)?invoice|\bdate\s+of\s+issue|\bissue\s*date",
        r"\bbill(?:ing)?\s+date|\bissued\s+on|\bcredit\s+note\s+date",
        r"(?<!be)rechnungs?[-\s]*datum|\bbeleg[-\s]*datum|ausstellungs[-\s]*datum",
        r"gutschrifts?[-\s]*datum",
        r"\bdate\s+(?:de\s+)?(?:la\s+)?facture|\bdate\s+de\s+facturation|\bdate\s+d['’]émission",
        r"\bfactuur\s*datum|\bdatum\s+factuur"),
)
_GENERIC_DATE = _rx(r"^(?!.*\b(?:due|fällig\w*|échéance|limite|order|delivery|livraison|liefer\w*"
                    r"|bestell\w*|leistung\w*|verval\w*)\b).*?(?<![\w-])(?:date|datum)\s*:")
_GROSS_TIERS = (
    _rx(r"\bgrand\s*total|\binvoice\s+total|\btotal\s+(?:for|of)\s+this\s+invoice|\btotal\s+amount",
        r"\b(?:incl(?:\.|usive|uding)?|inkl(?:\.|usive)?|inclusief)\s[^\n]{0,30}?"
        r"(?:VAT|tax|BTW|TVA|MwSt|USt|\w*steuer)",
        r"bruttosumme|rechnungssumme\s+brutto|summe\s+brutto|bruttobetrag|rechnungsbetrag",
        r"endbetrag|gesamtbetrag(?!\s+der)|gesamtsumme",
        r"\btotal\s+TTC|\bmontant\s+TTC|\bTTC\b|\bmontant\s+total",
        r"factuur\s*totaal|\btotaal\s*(?:incl\w*|bedrag)|totaalbedrag"),
    # a plain "Total" on a line that names no net or tax amount
    # ("\b\w*steuer\b" is "steuer\b": a letter boundary always starts the word it ends)
    _rx(r"^(?!.*(?:\b(?:sub|net|netto|HT|excl\w*|tax\w*|vat|tva|btw|mwst|ust)\b|steuer\b)).*?"
        r"(?<![\w-])(?:total|totaal)\b"),
)
_DUE_TIERS = (
    _rx(r"\b(?:amount|balance|total)\s+due|\bamount\s+payable|zahlbetrag|\bzu\s+zahlen\w*",
        r"\b(?:solde|somme|montant|net)\s+(?:à|a)\s+payer|montant\s+du\s+prélèvement",
        r"\bte\s+betalen|openstaand\s+bedrag"),
)
_NET_TIERS = (
    _rx(r"\bsub-?\s*total|\btotal\s+(?:HT|net|excl\w*|hors\s+taxes?|without\s+(?:VAT|tax))",
        r"\bnet\s+(?:total|amount)|\buntaxed\s+amount|\bmontant\s+HT",
        r"rechnungssumme\s+(?:ohne\s+USt|netto)",
        r"nettobetrag|nettosumme|summe\s+netto|\btotaal\s+excl\w*|subtotaal"),
)
_TAX_TIERS = (
    _rx(r"\btotal\s+(?:tax\w*|VAT|TVA|BTW)|\b(?:tax|VAT)\s+(?:total|amount)",
        r"\bmontant\s+(?:de\s+la\s+)?TVA|steuerbetrag|\b(?:mwst|ust)\.?-?\s*betrag",
        r"umsatzsteuerbetrag|\bbtw[-\s]*bedrag|\btotaal\s+btw"),
)
# A seller label ending its line or followed by ":" (see ``_seller_header``).
_SELLER_LABEL = _rx(r"(?:verkäufer|lieferant|rechnungsersteller|seller|supplier|vendor"
                    r"|service\s+provider|sold\s+by|fournisseur|vendeur|leverancier|verkoper)"
                    r"(?=\s*+(?::|$))")
_BUYER_HEADER = _rx(r"^\s*(?:käufer|rechnungsempfänger|leistungsempfänger|bill(?:ed)?\s+to|buyer"
                    r"|customer|client|acheteur|destinataire|klant|afnemer|billing\s+address)\b")
_BUYER_LINE = _rx(r"client|customer|kunde|käufer|klant|\buw\b|\byour\b|buyer|acheteur")
_NOT_A_NAME = _rx(r"^(?:\(|(?:globale\s+)?nummer|number|gln\b|lief(?:er)?[-\s]*nr|tel|fax|e-?mail)")
_NAME_FIELD = _rx(r"^name\s*:\s*(.*)$")
_VAT_LABEL = _rx(r"\bust\.?[-\s]*id\w*\.?(?:[-\s]*nr\.?)?|umsatzsteuer[-\s]*id\w*",
                 r"\bvat\b(?:\s*(?:reg\w*\.?|id|no\.?|number))*",
                 r"\bbtw\b(?:[-\s]*(?:nummer|nr|id)\.?)?",
                 r"\btva\b(?:\s*intra\w*(?:\s*communautaire)?)?")
# fmt: on
# Possessive "\s*+": two optional runs of spaces in a row must not trade spaces (cubic).
_NUMBER_TOKEN = re.compile(r"\s*+[:.#]?\s*+(?:#\s*+)?([A-Za-z0-9][\w./\-]*+)")
_VAT_ID = re.compile(r"\s*+[:.]?\s*+([A-Z]{2})\s?((?:U|[0-9A-Z]{2})?\d[\d .]{6,14}\d(?:B\d\d)?)")
# "Muster AG - Hauptstr. 4 - D-12345 Musterstadt": the sender line above the address window
_RETURN_ADDRESS = re.compile(r"^\s*+([^\s\-–|][^\-–|\n]{2,59}?)\s+[-–|]\s+[^\n]*\b\d{4,5}\s+\w")
_PAGE_MARKER = re.compile(r"^--- page \d+ ---$")

# ------------------------------------------------------------------------ value finders

ValueFn = Callable[[Lines, int, re.Match[str]], T | None]


def _scan(
    lines: Lines, tiers: Sequence[re.Pattern[str]], value: ValueFn[T], *, last: bool = False
) -> tuple[T, int] | None:
    """The value next to the first (``last``: final) label of the best tier that has one."""
    for pattern in tiers:
        hits = [
            (v, i)
            for i, line in enumerate(lines)
            for m in _label_hits(pattern, line)
            if (v := value(lines, i, m)) is not None
        ]
        if hits:
            return hits[-1] if last else hits[0]
    return None


def _label_hits(pattern: re.Pattern[str], line: str) -> list[re.Match[str]]:
    """The label's matches on ``line``: all of them, or the first and last few of many."""
    head: list[re.Match[str]] = []
    tail: deque[re.Match[str]] = deque(maxlen=_MAX_HITS_PER_LINE // 2)
    for m in pattern.finditer(line):
        (head if len(head) < _MAX_HITS_PER_LINE // 2 else tail).append(m)
    return head + list(tail)


def _column_total(lines: Lines, i: int) -> Decimal | None:
    """Last amount of the last all-numeric row under a table header (the totals row)."""
    total = None
    for row in lines[i + 1 : i + 12]:
        cells = _CURRENCY.sub(" ", row).split()
        if not cells or not all(_AMOUNT.fullmatch(c) or _PERCENT.fullmatch(c) for c in cells):
            break
        total = next(reversed(_amounts(row, True)), total)
    return total


def _amount_value(lines: Lines, i: int, m: re.Match[str]) -> Decimal | None:
    line, after = lines[i], lines[i][m.end() :]
    if found := _amounts(after, True) or _amounts(line[: m.start()], True):
        return found[-1]
    if re.search(r"\w", after):
        return None
    below = next((x.strip() for x in lines[i + 1 : i + 3] if x.strip()), "")
    if _AMOUNT.fullmatch(_CURRENCY.sub("", below).strip()) and (found := _amounts(below, True)):
        return found[-1]
    return _column_total(lines, i) if len(line[: m.start()].split()) >= 2 else None


def _date_value(month_first: bool) -> ValueFn[dt.date]:
    def value(lines: Lines, i: int, m: re.Match[str]) -> dt.date | None:
        line = lines[i]
        if after := _dates(line[m.end() :], month_first=month_first):
            return after[0]
        if before := _dates(line[: m.start()], month_first=month_first):
            return before[-1]
        below = (_dates(x, month_first=month_first) for x in lines[i + 1 : i + 3])
        return next((d[0] for d in below if d), None)

    return value


def _number_value(lines: Lines, i: int, m: re.Match[str]) -> str | None:
    token = _NUMBER_TOKEN.match(lines[i], m.end())
    if token is None:
        return None
    number = token[1].rstrip("./-")
    if not any(c.isdigit() for c in number) or _DATE.fullmatch(number):
        return None
    return number


def _document_type(lines: Lines) -> DocumentType:
    """Credit note or corrected invoice when the document's title says so."""
    head = "\n".join(lines[:30])
    if _CREDIT_NOTE.search(head) and not _SELF_BILLED.search(head):
        return DocumentType.CREDIT_NOTE
    return DocumentType.CORRECTED if _CORRECTED.search(head) else DocumentType.INVOICE


def _clean(name: str) -> str:
    return " ".join(name.split()).strip(" ,:")


def _seller_header(line: str) -> tuple[str, str] | None:
    """(text before, text after ":") of a seller heading line, ``None`` if it is none.

    Like ``^\\s*(?:(.+?)[,\\s]*)?LABEL\\s*(?::\\s*(.*?))?\\s*$`` (the leftmost label after some
    text, else one at the start), in linear time: that regex was cubic on a run of spaces.
    """
    start = len(line) - len(line.lstrip())
    chosen = None
    for m in _SELLER_LABEL.finditer(line):
        chosen = m
        if m.start() > start:
            break
    if chosen is None:
        return None
    before = line[start : chosen.start()] if chosen.start() > start else ""
    after = line[chosen.end() :].lstrip()
    return before, after[1:].strip() if after.startswith(":") else ""


def _seller_name(lines: Lines) -> str | None:
    """The name under a seller heading ("Verkäufer", "Sold By" …), else the sender line."""
    for i, line in enumerate(lines):
        if not (heading := _seller_header(line)):
            continue
        before, after = heading
        if inline := _clean(after or before):
            return inline
        name_follows = False
        for j in range(i + 1, min(i + 6, len(lines))):
            below = lines[j].strip()
            if not re.search(r"[^\W\d_]", below) or _NOT_A_NAME.match(below):
                continue
            if named := _NAME_FIELD.match(below):
                if named[1].strip():
                    return _clean(named[1])
                name_follows = True  # "Name:" alone: the name follows, maybe over several lines
                continue
            block = takewhile(lambda x: bool(x.strip()) and ":" not in x, lines[j:])
            return _clean(" ".join(block) if name_follows else below)
    head = (_RETURN_ADDRESS.match(x) for x in lines[:20])
    return next((_clean(m[1]) for m in head if m), None)


def _seller_vat_id(lines: Lines) -> str | None:
    buyer_block_end = -1  # ids in the few lines under a buyer heading are the buyer's
    for i, line in enumerate(lines):
        if _BUYER_HEADER.match(line) or _seller_header(line):
            buyer_block_end = i + 8 if _BUYER_HEADER.match(line) else -1
        if i <= buyer_block_end or _BUYER_LINE.search(line):
            continue
        for m in _VAT_LABEL.finditer(line):
            if vat := _VAT_ID.match(line, m.end()):
                return vat[1] + re.sub(r"[ .]", "", vat[2])
    return None


# --------------------------------------------------------------------------- entry points


def parse_text(text: str) -> Invoice | None:
    """An invoice from a PDF text layer, or ``None`` when the text is clearly not one."""
    # Bounded work whatever the text: a hostile PDF can hold megabytes on one line.
    text = "\n".join(line[:MAX_LINE_CHARS] for line in text[:MAX_TEXT_CHARS].splitlines())
    lines = [line for line in text.splitlines() if not _PAGE_MARKER.match(line)]
    gross = _scan(lines, _GROSS_TIERS, _amount_value, last=True)
    due = _scan(lines, _DUE_TIERS, _amount_value, last=True)
    has_keyword = bool(_INVOICE_WORD.search(text))
    if not has_keyword and gross is None and due is None:
        return None
    currency = detect_currency(text)
    month_first = currency == "USD"  # "03/08/2014" is March 8 on a dollar invoice
    number = _scan(lines, _NUMBER_TIERS, _number_value)
    issue_date = _scan(lines, _DATE_TIERS, _date_value(month_first))
    if issue_date is None and number is not None:  # "Handelsrechnung Nr. 471102 vom 05.03.2018"
        on_line = _dates(lines[number[1]], month_first=month_first)
        issue_date = (on_line[0], number[1]) if on_line else None
    issue_date = issue_date or _scan(lines, (_GENERIC_DATE,), _date_value(month_first))
    first_date = parse_date(text, month_first=month_first)
    net = _scan(lines, _NET_TIERS, _amount_value, last=True)
    tax = _scan(lines, _TAX_TIERS, _amount_value, last=True)
    invoice = Invoice(
        document_type=_document_type(lines),
        invoice_number=number[0] if number else None,
        issue_date=issue_date[0] if issue_date else first_date,
        currency=currency,
        seller=Party(name=_seller_name(lines), vat_id=_seller_vat_id(lines)),
        net_total=net[0] if net else None,
        tax_total=tax[0] if tax else None,
        gross_total=(gross or due or (None, 0))[0],
        amount_due=due[0] if due else None,
        provenance=Provenance(extractor="offline"),
    )
    if invoice.invoice_number is None and invoice.gross_total is None:
        # Mentions invoices (terms, reminders of policy) but carries none: nothing to store.
        return None
    check_gross_total(invoice)
    if not has_keyword:
        invoice.flag("offline: no invoice keyword found; may not be an invoice")
    return invoice


class OfflineExtractor:
    """Reads the PDF text layer and applies ``parse_text``; needs no network and no key."""

    name = "offline"

    def __init__(self, *, max_pages: int = MAX_PAGES) -> None:
        self.max_pages = max_pages

    def extract(
        self, data: bytes, *, filename: str | None = None, deadline: Deadline | None = None
    ) -> Invoice | None:
        """Raises ``BadDocumentError`` for broken or encrypted PDFs (from ``pdf_text``)."""
        return parse_text(pdf_text(data, max_pages=self.max_pages))
