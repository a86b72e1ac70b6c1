"""Ranking the links of a mail body: invoice downloads first, noise dropped."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invoicesync.fetch.links import rank_links

PDF_LINK = "https://portal.vendor.example/files/2024-0042.pdf"
INVOICE_LINK = "https://portal.vendor.example/invoice/2024-0042"
PLAIN_LINK = "https://vendor.example/account"


def test_pdf_path_ranks_first_then_invoice_words_then_the_rest() -> None:
    """A .pdf path beats invoice words, which beat an ordinary link."""
    assert rank_links([PLAIN_LINK, INVOICE_LINK, PDF_LINK], limit=5) == [
        PDF_LINK,
        INVOICE_LINK,
        PLAIN_LINK,
    ]


@pytest.mark.parametrize(
    "link",
    [
        "https://vendor.example/de/rechnung/17",
        "https://vendor.example/fr/facture?id=17",
        "https://vendor.example/es/factura/17",
        "https://vendor.example/it/fattura/17",
        "https://vendor.example/nl/factuur/17",
        "https://vendor.example/download?id=17",
        "https://vendor.example/my-bill/17",
        "https://vendor.example/receipt/17",
        "https://vendor.example/beleg/17",
        "https://vendor.example/d/17?format=pdf",
        "https://vendor.example/Rechnung%20M%C3%A4rz",
    ],
)
def test_invoice_words_in_any_language_rank_above_plain_links(link: str) -> None:
    """Invoice and download words in the path or query lift a link above a plain one."""
    assert rank_links([PLAIN_LINK, link], limit=2) == [link, PLAIN_LINK]


def test_upper_case_and_query_suffix_do_not_hide_a_pdf() -> None:
    """INVOICE.PDF?sig=… still counts as a .pdf path."""
    link = "https://cdn.vendor.example/INVOICE.PDF?sig=abc"
    assert rank_links([INVOICE_LINK, link], limit=2) == [link, INVOICE_LINK]


def test_link_text_counts_when_given() -> None:
    """The visible text of a link ("Download your invoice") lifts an opaque URL."""
    opaque = "https://t.vendor.example/c/a8f3e1"
    other = "https://t.vendor.example/c/77b2c0"
    assert rank_links([other, opaque], context={opaque: "Download your invoice"}, limit=2) == [
        opaque,
        other,
    ]


@pytest.mark.parametrize(
    "link",
    [
        "mailto:billing@vendor.example",
        "ftp://vendor.example/invoice.pdf",
        "javascript:alert(1)",
        "https://vendor.example/unsubscribe?u=1",
        "https://vendor.example/newsletter/abmelden",
        "https://vendor.example/email-preferences/opt-out",
        "https://unsubscribe.vendor.example/x",
        "https://www.facebook.com/vendor",
        "https://twitter.com/vendor",
        "https://x.com/vendor",
        "https://de.linkedin.com/company/vendor",
        "https://www.instagram.com/vendor",
        "https://www.youtube.com/@vendor",
        "https://youtu.be/abc",
        "https://vendor.example/img/logo.png",
        "https://vendor.example/banner.JPG?v=2",
        "https://track.vendor.example/open/pixel.gif?id=1",
        "https://track.vendor.example/e/pixel?id=1",
        "https://track.vendor.example/beacon/17",
        "https:///no-host",
        "http://[::1/broken",
    ],
)
def test_noise_is_dropped(link: str) -> None:
    """Unsubscribe, social, image, pixel, mailto and non-http links are never tried."""
    assert rank_links([link, PDF_LINK], limit=5) == [PDF_LINK]


def test_unsubscribe_text_drops_the_link() -> None:
    """A link whose text says unsubscribe is dropped even if the URL looks harmless."""
    link = "https://vendor.example/l/9f8e"
    assert rank_links([link], context={link: "Unsubscribe"}, limit=3) == []


def test_limit_and_duplicates() -> None:
    """At most ``limit`` links, each once; limit 0 gives none."""
    links = [PDF_LINK, PDF_LINK, INVOICE_LINK, PLAIN_LINK]
    assert rank_links(links, limit=2) == [PDF_LINK, INVOICE_LINK]
    assert rank_links(links, limit=0) == []


def test_ties_keep_the_mail_order() -> None:
    """Links that score the same stay in the order the mail lists them."""
    links = [f"https://vendor.example/page/{n}" for n in range(5)]
    assert rank_links(links, limit=5) == links


_URLISH = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda scheme, host, path: f"{scheme}://{host}/{path}",
        st.sampled_from(["http", "https", "HTTP", "ftp", "mailto", ""]),
        st.text(max_size=30),
        st.text(max_size=40),
    ),
)


@given(
    st.lists(_URLISH, max_size=20),
    st.dictionaries(st.text(max_size=40), st.text(max_size=40), max_size=5),
    st.integers(min_value=-2, max_value=30),
)
def test_never_raises_on_random_strings(
    links: list[str], context: dict[str, str], limit: int
) -> None:
    """Any strings in, a subset of them out: at most ``limit``, no duplicates, no errors."""
    ranked = rank_links(links, context=context, limit=limit)
    assert len(ranked) <= max(limit, 0)
    assert len(set(ranked)) == len(ranked) and set(ranked) <= set(links)
