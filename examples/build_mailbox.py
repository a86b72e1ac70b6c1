"""Build the sample Maildir in examples/mailbox/ from the files in examples/documents/.

Stdlib only and deterministic: fixed dates, Message-IDs, MIME boundaries and file
names, so running it again produces byte-identical files (a test checks this).
What the pipeline should do with each mail is listed in examples/README.md.

    python examples/build_mailbox.py [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCUMENTS = HERE / "documents"
ME = "Buchhaltung Strukan <buchhaltung@strukan.example>"


def document(name: str) -> bytes:
    """One of the PDF or XML files in examples/documents (see examples/README.md)."""
    return (DOCUMENTS / name).read_bytes()


def terms_pdf() -> bytes:
    """A tiny valid one-page PDF whose text is a vendor's terms and conditions."""
    lines = [
        "Nordwind Buerobedarf GmbH",
        "Allgemeine Geschaeftsbedingungen / General Terms and Conditions",
        "1. Scope: these terms apply to all deliveries and services.",
        "2. Prices are quoted in EUR plus statutory VAT.",
        "3. Payment is due within 14 days of delivery.",
        "This document is not an invoice.",
    ]
    text = "BT /F1 11 Tf 14 TL 72 770 Td " + " ".join(f"({line}) '" for line in lines) + " ET"
    stream = text.encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842]"
        b" /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def mail(number: int, sender: str, subject: str, date: str, body: str) -> EmailMessage:
    """A plain-text mail to the sample account with fixed headers."""
    msg = EmailMessage(policy=policy.default)
    msg["From"] = sender
    msg["To"] = ME
    msg["Subject"] = subject
    msg["Date"] = date
    msg["Message-ID"] = f"<sample-{number:02d}@mail.invoicesync.example>"
    msg.set_content(body)
    return msg


def attach_pdf(msg: EmailMessage, data: bytes, filename: str) -> None:
    msg.add_attachment(data, maintype="application", subtype="pdf", filename=filename)


def attach_xml(msg: EmailMessage, data: bytes, content_type: str, filename: str) -> None:
    # Bytes, so base64: the attachment decodes to exactly the file (line ends included).
    maintype, subtype = content_type.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)


def last_part(msg: EmailMessage) -> EmailMessage:
    *_, part = (p for p in msg.iter_attachments() if isinstance(p, EmailMessage))
    return part


def set_raw(part: EmailMessage, name: str, value: str) -> None:
    # Stored verbatim: the header as a particular (older) mail client would write it.
    del part[name]
    part.set_raw(name, value)


def fix_boundaries(msg: EmailMessage, number: int) -> None:
    # The generator would pick random boundaries; fixed ones keep the output reproducible.
    for index, part in enumerate(msg.walk()):
        if part.get_content_maintype() == "multipart":
            part.set_boundary(f"=_sample{number:02d}_{index}_=")


# ------------------------------------------------------------------ the mails


def invoice_mails() -> list[EmailMessage]:
    specs = [
        (
            "Saeco Klantenservice <facturen@saeco-shop.example>",
            "Uw factuur VF1005193039",
            "Thu, 08 Feb 2024 09:12:00 +0100",
            "Beste klant,\n\nIn de bijlage vindt u uw factuur.\n\nMet vriendelijke groet,\nSaeco",
            "saeco.pdf",
        ),
        (
            "Amazon Web Services <aws-billing@aws.example>",
            "Amazon Web Services Billing Statement Available",
            "Fri, 09 Feb 2024 03:00:00 +0000",
            "Greetings from Amazon Web Services,\n\nYour billing statement is attached.",
            "AmazonWebServices.pdf",
        ),
        (
            "QualityHosting AG <buchhaltung@qualityhosting.example>",
            "Ihre Rechnung Nr. 47774",
            "Mon, 12 Feb 2024 07:30:00 +0100",
            "Sehr geehrte Damen und Herren,\n\nanbei erhalten Sie Ihre Rechnung.",
            "QualityHosting.pdf",
        ),
        (
            "Netpresse <factures@netpresse.example>",
            "Votre facture n° 2022089083",
            "Tue, 13 Feb 2024 10:45:00 +0100",
            "Bonjour,\n\nVeuillez trouver ci-joint votre facture.\n\nCordialement,\nNetpresse",
            "NetpresseInvoice.pdf",
        ),
        (
            "Lieferant GmbH <rechnung@lieferant.example>",
            "Rechnung 471102 (XRechnung / ZUGFeRD)",
            "Wed, 14 Feb 2024 08:00:00 +0100",
            "Guten Tag,\n\nanbei unsere Rechnung 471102 als ZUGFeRD-PDF.",
            "XR_EN16931_Einfach.pdf",
        ),
        (
            "Taxiunternehmen TX GmbH <quittung@taxi-tx.example>",
            "Ihre Taxiquittung TX-471102",
            "Thu, 15 Feb 2024 23:41:00 +0100",
            "Vielen Dank für Ihre Fahrt. Ihre Quittung finden Sie im Anhang.",
            "ZF20_BASIC_Taxifahrt.pdf",
        ),
        (
            "Lieferant GmbH <buchhaltung@lieferant.example>",
            "ZUGFeRD-Rechnung 471102 vom 05.03.2013",
            "Fri, 16 Feb 2024 11:20:00 +0100",
            "Guten Tag,\n\nim Anhang die Rechnung im ZUGFeRD-1.0-Format.",
            "ZF1_COMFORT_Einfach.pdf",
        ),
    ]
    mails = []
    for number, (sender, subject, date, body, filename) in enumerate(specs, start=1):
        msg = mail(number, sender, subject, date, body)
        attach_pdf(msg, document(filename), filename)
        mails.append(msg)
    return mails


def facture_rfc2047(number: int) -> EmailMessage:
    # Outlook-style: the non-ASCII file name as an RFC 2047 encoded word in quotes.
    msg = mail(
        number,
        "Au bon moulin <facturation@aubonmoulin.example>",
        "Votre facture FA-2017-0010",
        "Mon, 19 Feb 2024 14:05:00 +0100",
        "Bonjour,\n\nVous trouverez votre facture Factur-X en pièce jointe.",
    )
    attach_pdf(msg, document("FX_FNFE_Facture_FR_BASICWL.pdf"), "facture.pdf")
    part = next(p for p in msg.iter_attachments() if isinstance(p, EmailMessage))
    encoded = "=?UTF-8?Q?Facture_=C3=A9lectronique_FA-2017-0010.pdf?="
    # Folded by hand: a line over 78 characters would make the generator re-encode it.
    set_raw(part, "Content-Type", f'application/pdf;\n name="{encoded}"')
    set_raw(part, "Content-Disposition", f'attachment;\n filename="{encoded}"')
    return msg


def rechnung_maerz_rfc2231(number: int) -> EmailMessage:
    msg = mail(
        number,
        "MVM Versicherungsverein <beitrag@mvm-versicherung.example>",
        "Ihre Beitragsrechnung März 2014",
        "Tue, 20 Feb 2024 09:00:00 +0100",
        "Sehr geehrter Herr Mustermann,\n\nanbei Ihre Beitragsrechnung zur Kfz-Versicherung.",
    )
    # application/octet-stream and a non-ASCII name: the policy writes filename*=utf-8''...
    msg.add_attachment(
        document("ZF1_COMFORT_Kraftfahrversicherung_Bruttopreise.pdf"),
        maintype="application",
        subtype="octet-stream",
        filename="Rechnung_März.pdf",
    )
    return msg


def saeco_reminder(number: int) -> EmailMessage:
    msg = mail(
        number,
        "Saeco Klantenservice <facturen@saeco-shop.example>",
        "Herinnering: factuur VF1005193039",
        "Thu, 22 Feb 2024 09:12:00 +0100",
        "Beste klant,\n\nWij hebben uw betaling nog niet ontvangen. De factuur is bijgevoegd.",
    )
    attach_pdf(msg, document("saeco.pdf"), "saeco.pdf")
    return msg


def forwarded_free(number: int) -> EmailMessage:
    original = EmailMessage(policy=policy.default)
    original["From"] = "Free Haut Débit <facture@free-adsl.example>"
    original["To"] = "Alexis de Lattre <alexis@strukan.example>"
    original["Subject"] = "Votre facture Free Haut Débit"
    original["Date"] = "Thu, 02 Jul 2015 06:00:00 +0200"
    original["Message-ID"] = "<free-562044387@free-adsl.example>"
    original.set_content("Bonjour,\n\nVotre facture du mois est disponible en pièce jointe.")
    attach_pdf(original, document("free_fiber.pdf"), "free_fiber.pdf")
    msg = mail(
        number,
        "Alexis de Lattre <alexis@strukan.example>",
        "Fwd: Votre facture Free Haut Débit",
        "Fri, 23 Feb 2024 16:30:00 +0100",
        "Hallo Buchhaltung,\n\nbitte die weitergeleitete Rechnung von Free verbuchen.\n\nAlexis",
    )
    msg.add_attachment(original)  # message/rfc822
    return msg


def newsletter(number: int) -> EmailMessage:
    msg = mail(
        number,
        "Nordwind Bürobedarf <newsletter@nordwind.example>",
        "Frühjahrsangebote: 20 % auf Kopierpapier",
        "Mon, 26 Feb 2024 06:00:00 +0100",
        "Unsere Frühjahrsangebote: https://www.nordwind.example/angebote\n\n"
        "Abmelden: https://www.nordwind.example/newsletter/abmelden?id=4711\n",
    )
    html = (
        "<html><body><h1>Frühjahrsangebote</h1>"
        '<p>20&nbsp;% auf <a href="https://www.nordwind.example/angebote?utm_source=nl&amp;'
        'utm_medium=email">Kopierpapier</a>.</p>'
        '<p><a href="https://www.nordwind.example/newsletter/abmelden?id=4711&amp;t=x9">'
        "Newsletter abbestellen</a></p></body></html>"
    )
    msg.add_alternative(html, subtype="html", cte="quoted-printable")
    return msg


def terms(number: int) -> EmailMessage:
    msg = mail(
        number,
        "Nordwind Bürobedarf <service@nordwind.example>",
        "Unsere neuen AGB / Our new terms and conditions",
        "Tue, 27 Feb 2024 10:00:00 +0100",
        "Guten Tag,\n\nanbei unsere ab 1. April gültigen AGB.",
    )
    attach_pdf(msg, terms_pdf(), "AGB_Nordwind_2024.pdf")
    return msg


def broken_pdf(number: int) -> EmailMessage:
    msg = mail(
        number,
        "Cloudy Hosting <billing@cloudy-hosting.example>",
        "Invoice CH-2024-0219",
        "Wed, 28 Feb 2024 02:15:00 +0000",
        "Hello,\n\nplease find your invoice attached.",
    )
    # A real invoice cut off after 3000 bytes, as a failed upload would leave it.
    attach_pdf(msg, document("NetpresseInvoice.pdf")[:3000], "invoice-broken.pdf")
    return msg


def html_as_pdf(number: int) -> EmailMessage:
    msg = mail(
        number,
        "Acme Telecom <no-reply@acme-telecom.example>",
        "Your invoice is ready",
        "Thu, 29 Feb 2024 12:00:00 +0000",
        "Dear customer,\n\nyour invoice for February is attached.",
    )
    page = (
        b"<html><head><title>Session expired</title></head>"
        b"<body><p>Your session has expired. Please log in again.</p></body></html>\n"
    )
    attach_pdf(msg, page, "invoice.pdf")
    return msg


def download_link(number: int) -> EmailMessage:
    link = "https://billing.example.com/invoices/INV-2024-001.pdf"
    msg = mail(
        number,
        "Example Billing <billing@example.com>",
        "Your invoice INV-2024-001 is ready to download",
        "Fri, 01 Mar 2024 08:00:00 +0000",
        f"Hello,\n\ndownload your invoice here: {link}\n\nThank you for your business.",
    )
    html = (
        "<html><body><p>Hello,</p>"
        f'<p><a href="{link}">Download your invoice</a></p>'
        '<p><a href="https://billing.example.com/account?tab=invoices&amp;lang=en">'
        "All invoices</a></p></body></html>"
    )
    msg.add_alternative(html, subtype="html")
    return msg


def bad_base64(number: int) -> EmailMessage:
    msg = mail(
        number,
        "Office Scanner <scanner@strukan.example>",
        "Scan an E-Mail: Rechnung",
        "Mon, 04 Mar 2024 13:37:00 +0100",
        "Gescanntes Dokument im Anhang.",
    )
    attach_pdf(msg, b"%PDF-1.4\n", "scan_0001.pdf")
    part = next(p for p in msg.iter_attachments() if isinstance(p, EmailMessage))
    # Declared base64, but the body was mangled on the way: the mail must fail, not crash.
    part.set_payload("%%% attachment damaged by the mail gateway %%%\n###@@@!!!\n")
    return msg


def not_a_mail() -> bytes:
    # Binary junk (a hash chain: reproducible without the random module) saved as a "mail".
    chunks = [hashlib.sha256(b"invoicesync-junk-%d" % i).digest() for i in range(16)]
    return b"\x8b" + b"".join(chunks)


# --------------------------------------------------- e-invoice XML mails (19-24)


def bare_ubl(number: int) -> EmailMessage:
    msg = mail(
        number,
        "Verkehrsbetriebe GmbH <rechnung@verkehrsbetriebe.example>",
        "Ihre Rechnung E2018092011804 (XRechnung)",
        "Tue, 05 Mar 2024 07:45:00 +0100",
        "Guten Tag,\n\nanbei Ihre Rechnung als XRechnung (UBL). Ein PDF versenden wir nicht mehr.",
    )
    attach_xml(msg, document("XR_EN16931_OEPNV.ubl.xml"), "application/xml", "E2018092011804.xml")
    return msg


def rendering_and_xml(number: int) -> EmailMessage:
    msg = mail(
        number,
        "MUSTERLIEFERANT GMBH <rechnung@musterlieferant.example>",
        "Rechnungskorrektur RK21012345",
        "Wed, 06 Mar 2024 10:10:00 +0100",
        "Sehr geehrte Damen und Herren,\n\nanbei unsere Rechnungskorrektur RK21012345 als "
        "XRechnung (CII) und zur Ansicht als PDF.",
    )
    # The PDF is only the human-readable view: its embedded XML was removed (examples/README.md).
    attach_pdf(
        msg,
        document("XR_EN16931_Rechnungskorrektur_rendering.pdf"),
        "Rechnungskorrektur_RK21012345.pdf",
    )
    attach_xml(
        msg,
        document("XR_EN16931_Rechnungskorrektur.cii.xml"),
        "text/xml",
        "Rechnungskorrektur_RK21012345.xml",
    )
    last_part(msg).set_param("charset", "utf-8")  # text/xml; charset="utf-8", still base64
    return msg


def resent_as_ubl(number: int) -> EmailMessage:
    msg = mail(
        number,
        "MUSTERLIEFERANT GMBH <rechnung@musterlieferant.example>",
        "Resend: invoice correction RK21012345",
        "Thu, 07 Mar 2024 15:20:00 +0100",
        "Dear customer,\n\nas requested, our invoice correction RK21012345 again, "
        "this time in UBL.",
    )
    attach_xml(
        msg,
        document("XR_EN16931_Rechnungskorrektur.ubl.xml"),
        "application/octet-stream",
        "RK21012345.xml",
    )
    return msg


def facturx_and_its_xml(number: int) -> EmailMessage:
    msg = mail(
        number,
        "MUSTERLIEFERANT GMBH <rechnung@musterlieferant.example>",
        "Warenrechnung R87654321012345 (ZUGFeRD 2.0 EXTENDED)",
        "Fri, 08 Mar 2024 09:30:00 +0100",
        "Guten Tag,\n\nanbei die Rechnung als ZUGFeRD-PDF und die XML-Datei noch einmal einzeln.",
    )
    attach_pdf(msg, document("ZF20_EXTENDED_Warenrechnung.pdf"), "R87654321012345.pdf")
    attach_xml(
        msg, document("ZF20_EXTENDED_Warenrechnung.xml"), "application/xml", "zugferd-invoice.xml"
    )
    # Some mailers write no Content-Type for a file they cannot type: only the disposition.
    del last_part(msg)["Content-Type"]
    return msg


def sepa_payment() -> bytes:
    """A short SEPA credit transfer initiation (pain.001.001.03): XML, but not an invoice."""
    return b"""\
<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"
          xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <CstmrCdtTrfInitn>
    <GrpHdr>
      <MsgId>STRUKAN-20240311-0001</MsgId>
      <CreDtTm>2024-03-11T08:55:00</CreDtTm>
      <NbOfTxs>1</NbOfTxs>
      <CtrlSum>529.87</CtrlSum>
      <InitgPty>
        <Nm>Strukan GmbH</Nm>
      </InitgPty>
    </GrpHdr>
    <PmtInf>
      <PmtInfId>STRUKAN-20240311-0001-1</PmtInfId>
      <PmtMtd>TRF</PmtMtd>
      <BtchBookg>false</BtchBookg>
      <NbOfTxs>1</NbOfTxs>
      <CtrlSum>529.87</CtrlSum>
      <PmtTpInf>
        <SvcLvl>
          <Cd>SEPA</Cd>
        </SvcLvl>
      </PmtTpInf>
      <ReqdExctnDt>2024-03-12</ReqdExctnDt>
      <Dbtr>
        <Nm>Strukan GmbH</Nm>
      </Dbtr>
      <DbtrAcct>
        <Id>
          <IBAN>DE89370400440532013000</IBAN>
        </Id>
      </DbtrAcct>
      <DbtrAgt>
        <FinInstnId>
          <BIC>COBADEFFXXX</BIC>
        </FinInstnId>
      </DbtrAgt>
      <ChrgBr>SLEV</ChrgBr>
      <CdtTrfTxInf>
        <PmtId>
          <EndToEndId>RE-471102</EndToEndId>
        </PmtId>
        <Amt>
          <InstdAmt Ccy="EUR">529.87</InstdAmt>
        </Amt>
        <Cdtr>
          <Nm>Lieferant GmbH</Nm>
        </Cdtr>
        <CdtrAcct>
          <Id>
            <IBAN>DE02120300000000202051</IBAN>
          </Id>
        </CdtrAcct>
        <RmtInf>
          <Ustrd>Rechnung 471102 vom 05.03.2018</Ustrd>
        </RmtInf>
      </CdtTrfTxInf>
    </PmtInf>
  </CstmrCdtTrfInitn>
</Document>
"""


def not_an_invoice_xml(number: int) -> EmailMessage:
    msg = mail(
        number,
        "Zahlungsverkehr Strukan <zahlungsverkehr@strukan.example>",
        "SEPA-Überweisung zur Freigabe: Rechnung 471102",
        "Mon, 11 Mar 2024 09:00:00 +0100",
        "Hallo Buchhaltung,\n\nim Anhang die SEPA-Datei für die Bank, bitte freigeben.",
    )
    attach_xml(msg, sepa_payment(), "application/xml", "sepa-payment.xml")
    return msg


def billion_laughs() -> bytes:
    """Nested entities (10 levels, 10**9 "lol"s when expanded) around a UBL Invoice root."""
    entities = ['  <!ENTITY lol0 "lol">'] + [
        f'  <!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">' for level in range(1, 10)
    ]
    text = "\n".join(
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            "<!DOCTYPE Invoice [",
            *entities,
            "]>",
            '<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"',
            '         xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:'
            'CommonBasicComponents-2">',
            "  <cbc:CustomizationID>urn:cen.eu:en16931:2017</cbc:CustomizationID>",
            "  <cbc:ID>INV-88231</cbc:ID>",
            "  <cbc:IssueDate>2024-03-12</cbc:IssueDate>",
            "  <cbc:InvoiceTypeCode>380</cbc:InvoiceTypeCode>",
            "  <cbc:Note>&lol9;</cbc:Note>",
            "  <cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>",
            "</Invoice>",
            "",
        ]
    )
    return text.encode("ascii")


def hostile_xml(number: int) -> EmailMessage:
    msg = mail(
        number,
        "Billing Department <billing@invoices-online.example>",
        "Invoice INV-88231 (UBL)",
        "Tue, 12 Mar 2024 04:12:00 +0000",
        "Dear customer,\n\nplease find your electronic invoice attached.",
    )
    attach_xml(msg, billion_laughs(), "application/xml", "invoice.xml")
    return msg


# ------------------------------------------------------------------ output


def build() -> list[bytes]:
    """Every sample message as raw bytes, in mailbox order."""
    makers: list[Callable[[int], EmailMessage | bytes]] = [
        facture_rfc2047,
        rechnung_maerz_rfc2231,
        saeco_reminder,
        forwarded_free,
        newsletter,
        terms,
        broken_pdf,
        html_as_pdf,
        download_link,
        bad_base64,
        lambda _number: not_a_mail(),
        bare_ubl,
        rendering_and_xml,
        resent_as_ubl,
        facturx_and_its_xml,
        not_an_invoice_xml,
        hostile_xml,
    ]
    messages: list[EmailMessage | bytes] = [*invoice_mails()]
    messages += [make(len(messages) + 1 + i) for i, make in enumerate(makers)]
    raw = []
    for number, msg in enumerate(messages, start=1):
        if isinstance(msg, bytes):  # already raw: not a mail at all
            raw.append(msg)
            continue
        fix_boundaries(msg, number)
        raw.append(msg.as_bytes(policy=policy.default))
    return raw


def write_maildir(out: Path) -> list[Path]:
    """Write the Maildir (cur/ with the mails, empty new/ and tmp/ kept by .gitkeep)."""
    cur = out / "cur"
    for sub in ("cur", "new", "tmp"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("new", "tmp"):
        (out / sub / ".gitkeep").write_bytes(b"")
    written = []
    for number, data in enumerate(build(), start=1):
        path = cur / f"{1700000000 + number}.M{number}P1.sample:2,S"
        path.write_bytes(data)
        written.append(path)
    for stale in set(cur.iterdir()) - set(written):  # mails from an older version of this script
        stale.unlink()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "mailbox", help="Maildir to write")
    args = parser.parse_args()
    for path in write_maildir(args.out):
        print(path)


if __name__ == "__main__":
    main()
