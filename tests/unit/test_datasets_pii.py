"""PII detectors and the three replacement methods: every covered type found and gone, checksums respected."""

from __future__ import annotations

import random

import pytest

from trainer.datasets.pii import (
    PiiScrubber,
    find_pii,
    hmac_pseudonymiser,
    iban_ok,
    luhn_ok,
    steuer_id_ok,
)


def valid_steuer_id(seed: int = 1) -> str:
    rng = random.Random(seed)
    while True:
        head = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(9))
        for last in "0123456789":
            if steuer_id_ok(head + last):
                return head + last


TAX_ID = valid_steuer_id()
PLANTED = {
    "EMAIL": "erika.mustermann@beispiel.de",
    "PHONE": "+49 171 1234567",
    "IBAN": "DE89 3704 0044 0532 0130 00",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IP_ADDRESS": "192.168.10.20",
    "DE_TAX_ID": TAX_ID,
    "DATE_OF_BIRTH": "12.03.1985",
    "PERSON": "Anna Meier",
}
TEXT = (f"Kontakt: {PLANTED['EMAIL']}, Handy {PLANTED['PHONE']}, Festnetz 030 12345678. "
        f"IBAN {PLANTED['IBAN']}, Karte {PLANTED['CREDIT_CARD']}. Login von {PLANTED['IP_ADDRESS']} und 2001:db8::7. "
        f"Steuer-ID {TAX_ID}. Sie ist geboren am {PLANTED['DATE_OF_BIRTH']}. Ansprechpartnerin: {PLANTED['PERSON']}, "
        f"Vertretung Herr Schulze. Call +1 415 555 2671 or mail j.doe@example.com.")


def test_every_type_found():
    found = {f.type: f.value for f in find_pii(TEXT)}
    for kind in PLANTED:
        assert found.get(kind) is not None, kind
    types = [f.type for f in find_pii(TEXT)]
    assert types.count("PHONE") == 3 and types.count("EMAIL") == 2 and types.count("IP_ADDRESS") == 2


@pytest.mark.parametrize("method", ["redact", "mask", "pseudonymise"])
def test_planted_values_gone(method):
    scrubber = PiiScrubber(method, hmac_pseudonymiser(b"k" * 32))
    out = scrubber.scrub_text(TEXT)
    for value in [*PLANTED.values(), "030 12345678", "j.doe@example.com", "Schulze", "2001:db8::7"]:
        assert value not in out, (method, value)
        assert value.replace(" ", "") not in out.replace(" ", "")
    assert scrubber.counts["PHONE"] == 3 and scrubber.counts["PERSON"] == 2


def test_checksums_reject_lookalikes():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE88370400440532013000")
    assert steuer_id_ok(TAX_ID) and not steuer_id_ok(TAX_ID[:-1] + str((int(TAX_ID[-1]) + 1) % 10))
    text = "Bestellnummer 4111 1111 1111 1112, Konto DE88 3704 0044 0532 0130 00, am 12.03.2020 um 1234 Euro."
    assert find_pii(text) == []


def test_date_needs_a_birth_keyword():
    assert [f.type for f in find_pii("Termin am 12.03.1985 im Büro.")] == []
    assert [f.type for f in find_pii("Date of birth: March 3, 1990.")] == ["DATE_OF_BIRTH"]
    assert [f.type for f in find_pii("geb. 3. Mai 1990 in Köln")] == ["DATE_OF_BIRTH"]


def test_pseudonyms_are_stable_within_a_key_and_differ_across_keys():
    a = PiiScrubber("pseudonymise", hmac_pseudonymiser(b"a" * 32))
    b = PiiScrubber("pseudonymise", hmac_pseudonymiser(b"b" * 32))
    one = a.scrub_text("mail Erika.Mustermann@Beispiel.de now")
    two = a.scrub_text("again erika.mustermann@beispiel.de")
    token = one.split()[1]
    assert token.startswith("<EMAIL_") and token in two
    assert token not in b.scrub_text("mail erika.mustermann@beispiel.de now")


def test_mask_keeps_shape_only():
    out = PiiScrubber("mask").scrub_text("IP 10.1.2.3 ok")
    assert out == "IP **.*.*.* ok"
