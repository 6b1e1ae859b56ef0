"""The vault: envelope encryption of provider keys, its text form, KEK rotation and KEK loading."""

from __future__ import annotations

import base64
import dataclasses
import re
import string
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sluice.errors import ConfigError, SluiceError, VaultError
from sluice.keys.vault import (
    Sealed,
    Vault,
    fingerprint,
    kek_id,
    load_keks,
    new_kek,
)

OLD = bytes(range(32))
NEW = bytes(range(100, 132))
OTHER = b"\xaa" * 32
ROW = "provider_key:1:acme"
SECRET = "sk-live-THIS-IS-THE-PROVIDER-KEY-0123456789"
UNREADABLE = "cannot be decrypted: wrong row or key-encryption key"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# Round trips


@given(plaintext=st.text(), binding=st.text())
def test_seal_then_open_round_trips(plaintext: str, binding: str) -> None:
    vault = Vault(NEW)
    sealed = vault.seal(plaintext, binding)
    assert vault.open(sealed, binding) == plaintext
    assert vault.open(Sealed.from_text(sealed.to_text()), binding) == plaintext


@given(plaintext=st.text(), binding=st.text())
def test_text_form_round_trips(plaintext: str, binding: str) -> None:
    sealed = Vault(NEW).seal(plaintext, binding)
    text = sealed.to_text()
    assert text.isascii()
    assert re.fullmatch(r"v1\.[0-9a-f]{16}(\.[A-Za-z0-9_-]+){3}", text)
    assert Sealed.from_text(text) == sealed


def test_sealed_shape() -> None:
    sealed = Vault(NEW).seal(SECRET, ROW)
    assert sealed.kek_id == kek_id(NEW)
    assert len(sealed.wrapped_key) == 12 + 32 + 16
    assert len(sealed.nonce) == 12
    assert len(sealed.ciphertext) == len(SECRET.encode()) + 16
    assert sealed.to_text().startswith(f"v1.{kek_id(NEW)}.")


def test_two_seals_of_the_same_plaintext_differ() -> None:
    vault = Vault(NEW)
    first, second = vault.seal(SECRET, ROW), vault.seal(SECRET, ROW)
    assert first.wrapped_key != second.wrapped_key
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext
    assert first.to_text() != second.to_text()


def test_previous_kek_still_opens() -> None:
    sealed = Vault(OLD).seal(SECRET, ROW)
    assert Vault(NEW, [OLD]).open(sealed, ROW) == SECRET


# Binding, tampering, unknown KEKs


@given(plaintext=st.text(), binding=st.text(), other=st.text())
def test_a_different_binding_does_not_open(plaintext: str, binding: str, other: str) -> None:
    assume(binding != other)
    vault = Vault(NEW)
    with pytest.raises(VaultError, match=UNREADABLE):
        vault.open(vault.seal(plaintext, binding), other)


def test_ciphertext_copied_to_another_row_does_not_open() -> None:
    vault = Vault(NEW)
    row_1 = vault.seal(SECRET, "provider_key:1:acme")
    row_2 = vault.seal("sk-other", "provider_key:2:acme")
    copied = Sealed.from_text(row_1.to_text())  # what a stolen TEXT column would carry
    with pytest.raises(VaultError, match=UNREADABLE):
        vault.open(copied, "provider_key:2:acme")
    # Nor does mixing the wrapped key of one row with the payload of another.
    mixed = dataclasses.replace(row_2, wrapped_key=row_1.wrapped_key)
    with pytest.raises(VaultError, match=UNREADABLE):
        vault.open(mixed, "provider_key:2:acme")
    with pytest.raises(VaultError, match=UNREADABLE):
        vault.rewrap(copied, "provider_key:2:acme")


@pytest.mark.parametrize("field", ["wrapped_key", "nonce", "ciphertext"])
def test_tampering_with_any_byte_fails(field: str) -> None:
    vault = Vault(NEW)
    sealed = vault.seal(SECRET, ROW)
    original: bytes = getattr(sealed, field)
    for index in range(len(original)):
        tampered = dataclasses.replace(sealed, **{field: flip(original, index)})
        with pytest.raises(VaultError, match=UNREADABLE):
            vault.open(tampered, ROW)


@pytest.mark.parametrize("field", ["wrapped_key", "nonce", "ciphertext"])
@pytest.mark.parametrize("change", ["empty", "truncated", "extended"])
def test_wrong_length_parts_fail_cleanly(field: str, change: str) -> None:
    vault = Vault(NEW)
    sealed = vault.seal(SECRET, ROW)
    original: bytes = getattr(sealed, field)
    value = {"empty": b"", "truncated": original[:-1], "extended": original + b"\x00"}[change]
    with pytest.raises(VaultError, match=UNREADABLE):
        vault.open(dataclasses.replace(sealed, **{field: value}), ROW)


def test_every_character_of_the_text_form_matters() -> None:
    vault = Vault(NEW, [OLD])
    text = vault.seal(SECRET, ROW).to_text()
    for index, char in enumerate(text):
        changed = text[:index] + ("B" if char == "A" else "A") + text[index + 1 :]
        with pytest.raises(VaultError):
            vault.open(Sealed.from_text(changed), ROW)


def test_unknown_kek_fails_and_names_its_id_only() -> None:
    sealed = Vault(OTHER).seal(SECRET, ROW)
    with pytest.raises(VaultError, match=UNREADABLE) as exc:
        Vault(NEW, [OLD]).open(sealed, ROW)
    assert kek_id(OTHER) in exc.value.message


def test_relabelled_kek_id_fails() -> None:
    vault = Vault(NEW, [OLD])
    sealed = dataclasses.replace(vault.seal(SECRET, ROW), kek_id=kek_id(OLD))
    with pytest.raises(VaultError, match=UNREADABLE):
        vault.open(sealed, ROW)


def _forge(data_key: bytes, payload: bytes) -> Sealed:
    """A seal made with the right KEK by some other writer, outside Vault.seal's guarantees."""
    wrap_nonce, nonce = b"\x01" * 12, b"\x02" * 12
    wrapped = wrap_nonce + AESGCM(NEW).encrypt(wrap_nonce, data_key, ROW.encode())
    ciphertext = AESGCM(b"\x03" * 32).encrypt(nonce, payload, ROW.encode())
    return Sealed(kek_id(NEW), wrapped, nonce, ciphertext)


def test_authentic_but_foreign_seals_fail_cleanly() -> None:
    vault = Vault(NEW)
    assert vault.open(_forge(b"\x03" * 32, b"ok"), ROW) == "ok"
    with pytest.raises(VaultError, match=UNREADABLE):
        vault.open(_forge(b"\x03" * 32, b"\xff\xfe not UTF-8"), ROW)
    with pytest.raises(VaultError, match=UNREADABLE):
        vault.open(_forge(b"\x03" * 16, b"ok"), ROW)  # an AES-128 data key is not ours


# The text form


VALID = Vault(NEW).seal(SECRET, ROW).to_text()
PARTS = VALID.split(".")


def _with_part(index: int, value: str) -> str:
    parts = list(PARTS)
    parts[index] = value
    return ".".join(parts)


MALFORMED = [
    "",
    "v1",
    ".",
    "....",
    "v1....",
    "not a sealed secret",
    SECRET,
    "v1." + "." * 10,
    ".".join(PARTS[:4]),
    ".".join([*PARTS, "AAAA"]),
    _with_part(0, "v2"),
    _with_part(0, "V1"),
    _with_part(0, ""),
    _with_part(1, ""),
    _with_part(1, "0123"),
    _with_part(1, "0123456789ABCDEF"),  # upper case
    _with_part(1, "0123456789abcdeg"),
    _with_part(1, "0123456789abcdef0"),
    _with_part(2, ""),
    _with_part(2, "AAAA"),  # wrapped key too short
    _with_part(2, PARTS[2] + "AAAA"),  # too long
    _with_part(3, ""),
    _with_part(3, "AAAAAAAAAAA"),  # 8 bytes, not 12
    _with_part(3, "AAAAAAAAAAAAAAAAA"),  # 17 characters: not a whole number of bytes
    _with_part(3, PARTS[3] + "="),  # padding
    _with_part(3, "+" + PARTS[3][1:]),  # standard, not URL-safe, alphabet
    _with_part(3, "/" + PARTS[3][1:]),
    _with_part(3, " " + PARTS[3]),
    _with_part(3, PARTS[3] + "\n"),
    _with_part(3, "AAAAAAAAAAAAAAAÅ"),
    _with_part(3, "\uff21" * 16),  # full-width A: a letter, but not base64
    _with_part(4, ""),
    _with_part(4, "AAAA"),  # shorter than a GCM tag
    _with_part(4, "A" * 22 + "B"),  # 17 bytes with non-canonical trailing bits
    "v1." + kek_id(NEW) + ".AAAA.AAAA.AAAA",
    " " + VALID,
    VALID + "\n",
    VALID.replace(".", ":"),
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(VaultError, match="malformed"):
        Sealed.from_text(text)


def test_the_valid_shape_used_by_the_malformed_cases_parses() -> None:
    assert Sealed.from_text(VALID).kek_id == kek_id(NEW)
    assert Sealed.from_text(_with_part(3, "A" * 16)).nonce == b"\x00" * 12
    assert Sealed.from_text(_with_part(4, "A" * 23)).ciphertext == b"\x00" * 17


def _parse_or_refuse(text: str) -> None:
    """from_text either refuses with VaultError or returns what prints back as the same text."""
    try:
        sealed = Sealed.from_text(text)
    except VaultError:
        return
    assert sealed.to_text() == text


@given(st.text())
def test_from_text_raises_only_vault_error(text: str) -> None:
    _parse_or_refuse(text)


@given(st.lists(st.sampled_from([*PARTS, "", "A", "AAAA", "=", "+/", " "]), max_size=7))
def test_from_text_on_near_misses_raises_only_vault_error(parts: list[str]) -> None:
    _parse_or_refuse(".".join(parts))


# Rotation


def test_rewrap_moves_to_the_current_kek() -> None:
    sealed = Vault(OLD).seal(SECRET, ROW)
    rotating = Vault(NEW, [OLD])
    assert rotating.needs_rewrap(sealed)
    rewrapped = rotating.rewrap(sealed, ROW)
    assert rewrapped.kek_id == kek_id(NEW) == rotating.current_id
    assert not rotating.needs_rewrap(rewrapped)
    assert (rewrapped.nonce, rewrapped.ciphertext) == (sealed.nonce, sealed.ciphertext)
    assert rewrapped.wrapped_key != sealed.wrapped_key
    assert Vault(NEW).open(Sealed.from_text(rewrapped.to_text()), ROW) == SECRET
    with pytest.raises(VaultError, match=UNREADABLE):
        Vault(OLD).open(rewrapped, ROW)
    with pytest.raises(VaultError, match=UNREADABLE):
        Vault(NEW).open(sealed, ROW)


def test_rewrap_of_a_current_seal_changes_nothing() -> None:
    vault = Vault(NEW, [OLD])
    sealed = vault.seal(SECRET, ROW)
    assert not vault.needs_rewrap(sealed)
    assert vault.rewrap(sealed, ROW) == sealed


@pytest.mark.parametrize("current", [True, False])
def test_rewrap_checks_the_binding(current: bool) -> None:
    sealed = (Vault(NEW) if current else Vault(OLD)).seal(SECRET, ROW)
    with pytest.raises(VaultError, match=UNREADABLE):
        Vault(NEW, [OLD]).rewrap(sealed, "provider_key:2:acme")


def test_rewrap_with_an_unknown_kek_fails() -> None:
    sealed = Vault(OTHER).seal(SECRET, ROW)
    vault = Vault(NEW, [OLD])
    assert vault.needs_rewrap(sealed)
    with pytest.raises(VaultError, match=UNREADABLE):
        vault.rewrap(sealed, ROW)


def test_current_kek_listed_as_previous_too_is_harmless() -> None:
    vault = Vault(NEW, [NEW, OLD])
    assert vault.current_id == kek_id(NEW)
    assert vault.open(vault.seal(SECRET, ROW), ROW) == SECRET


# KEKs, fingerprints, and what never shows


@pytest.mark.parametrize("length", [0, 1, 16, 24, 31, 33, 64])
def test_a_kek_of_the_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(VaultError, match="32 bytes"):
        Vault(b"k" * length)
    with pytest.raises(VaultError, match="32 bytes"):
        Vault(NEW, [OLD, b"k" * length])


def test_kek_id_is_short_stable_and_distinct() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", kek_id(NEW))
    assert kek_id(NEW) == kek_id(bytes(NEW))
    assert len({kek_id(OLD), kek_id(NEW), kek_id(OTHER)}) == 3
    assert kek_id(NEW) not in NEW.hex()


def test_fingerprint_is_stable_and_shaped() -> None:
    assert fingerprint(SECRET) == fingerprint(SECRET)
    assert re.fullmatch(r"fp_[0-9a-f]{16}", fingerprint(SECRET))
    assert fingerprint(SECRET) != fingerprint(SECRET + "x")
    # Pinned: a fingerprint shown today must match the one shown after an upgrade.
    assert fingerprint("sk-test") == "fp_f3abf2a6cc4f0098"  # sha256 of the key, as `sha256sum` shows


def _substrings(text: str, size: int) -> set[str]:
    return {text[i : i + size] for i in range(len(text) - size + 1)}


# Derandomized: a 64-bit hash may, very rarely, share 4 hex characters with a key by chance; a fixed
# set of examples keeps this a check of the construction rather than a flaky lottery.
@settings(derandomize=True, max_examples=300)
@given(st.text(min_size=4) | st.text(string.ascii_letters + string.digits + "-_", min_size=20))
def test_fingerprint_shows_no_part_of_the_key(key: str) -> None:
    assert not _substrings(key, 4) & _substrings(fingerprint(key), 4)


@given(plaintext=st.text(min_size=1).map(lambda s: f"sk-{s}-PLAINTEXT"), binding=st.text())
def test_nothing_shown_contains_the_plaintext(plaintext: str, binding: str) -> None:
    vault = Vault(NEW)
    sealed = vault.seal(plaintext, binding)
    assert plaintext not in repr(sealed)
    assert plaintext not in str(sealed)
    with pytest.raises(VaultError) as exc:
        vault.open(sealed, binding + "-other row")
    assert plaintext not in str(exc.value)
    assert plaintext not in repr(exc.value)
    assert "PLAINTEXT" not in exc.value.message


def test_repr_shows_no_key_material() -> None:
    vault = Vault(NEW, [OLD])
    sealed = vault.seal(SECRET, ROW)
    shown = repr(sealed) + str(sealed) + repr(vault)
    for secret_bytes in (NEW, OLD, sealed.wrapped_key, sealed.ciphertext):
        assert secret_bytes.hex() not in shown
        assert repr(secret_bytes) not in shown
        assert b64(secret_bytes) not in shown


def test_vault_error_is_a_server_error() -> None:
    error = VaultError("x")
    assert isinstance(error, SluiceError)
    assert (error.status, error.code) == (500, "vault_error")


# Loading KEKs


def test_no_kek_configured_is_none() -> None:
    assert load_keks({}) is None
    assert load_keks({"SLUICE_KEK": "", "SLUICE_KEK_FILE": ""}) is None
    assert load_keks({"PATH": "/bin"}) is None


@pytest.mark.parametrize(
    "text",
    [
        b64(NEW),
        b64(NEW).rstrip("="),
        base64.urlsafe_b64encode(NEW).decode(),
        base64.urlsafe_b64encode(NEW).decode().rstrip("="),
        f"  {b64(NEW)}\n",
    ],
)
def test_kek_from_the_environment(text: str) -> None:
    vault = load_keks({"SLUICE_KEK": text})
    assert vault is not None
    assert vault.current_id == kek_id(NEW)


def test_kek_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_text(f"{b64(NEW)}\n")
    vault = load_keks({"SLUICE_KEK_FILE": str(path)})
    assert vault is not None
    assert vault.current_id == kek_id(NEW)


def test_previous_keks_from_the_environment() -> None:
    sealed_old, sealed_other = Vault(OLD).seal(SECRET, ROW), Vault(OTHER).seal(SECRET, ROW)
    previous = f" {b64(OLD)} ,{base64.urlsafe_b64encode(OTHER).decode().rstrip('=')},"
    vault = load_keks({"SLUICE_KEK": b64(NEW), "SLUICE_KEK_PREVIOUS": previous})
    assert vault is not None
    assert vault.current_id == kek_id(NEW)
    assert vault.open(sealed_old, ROW) == vault.open(sealed_other, ROW) == SECRET
    assert vault.open(vault.rewrap(sealed_old, ROW), ROW) == SECRET


def test_previous_keks_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "kek").write_text(b64(NEW))
    (tmp_path / "previous").write_text(f"{b64(OLD)}\n\n  {b64(OTHER)}  \n")
    vault = load_keks(
        {"SLUICE_KEK_FILE": str(tmp_path / "kek"), "SLUICE_KEK_PREVIOUS_FILE": str(tmp_path / "previous")}
    )
    assert vault is not None
    assert vault.open(Vault(OLD).seal(SECRET, ROW), ROW) == SECRET
    assert vault.open(Vault(OTHER).seal(SECRET, ROW), ROW) == SECRET


def test_new_kek_is_loadable_and_fresh() -> None:
    text = new_kek()
    assert len(base64.b64decode(text, validate=True)) == 32
    vault = load_keks({"SLUICE_KEK": text})
    assert vault is not None
    assert vault.open(vault.seal(SECRET, ROW), ROW) == SECRET
    assert new_kek() != text


BAD_VALUES = [
    "not base64 at all!",
    "****",
    b64(NEW)[:-4] + "!!!!",
    b64(b"k" * 16),
    b64(b"k" * 31),
    b64(b"k" * 33),
    NEW.hex(),  # hex is not base64 of 32 bytes
    "A",
]


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("variable", ["SLUICE_KEK", "SLUICE_KEK_PREVIOUS"])
def test_bad_kek_names_the_variable_not_the_value(variable: str, value: str) -> None:
    environ = {"SLUICE_KEK": b64(NEW), variable: value}
    with pytest.raises(ConfigError) as exc:
        load_keks(environ)
    assert variable in exc.value.message
    assert value not in exc.value.message
    assert all(value not in problem for problem in exc.value.problems)
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None or exc.value.__suppress_context__  # no value in a traceback


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("variable", ["SLUICE_KEK_FILE", "SLUICE_KEK_PREVIOUS_FILE"])
def test_bad_kek_file_names_the_variable_not_the_value(tmp_path: Path, variable: str, value: str) -> None:
    (tmp_path / "good").write_text(b64(NEW))
    (tmp_path / "bad").write_text(value)
    environ = {"SLUICE_KEK_FILE": str(tmp_path / "good"), variable: str(tmp_path / "bad")}
    with pytest.raises(ConfigError) as exc:
        load_keks(environ)
    assert variable in exc.value.message
    assert value not in exc.value.message


@pytest.mark.parametrize("variable", ["SLUICE_KEK_FILE", "SLUICE_KEK_PREVIOUS_FILE"])
@pytest.mark.parametrize("kind", ["missing", "directory", "binary"])
def test_unreadable_kek_file(tmp_path: Path, variable: str, kind: str) -> None:
    (tmp_path / "good").write_text(b64(NEW))
    path = tmp_path / "secret-path-name"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe" + NEW)
    environ = {"SLUICE_KEK_FILE": str(tmp_path / "good"), variable: str(path)}
    with pytest.raises(ConfigError, match="cannot be read") as exc:
        load_keks(environ)
    assert variable in exc.value.message
    assert "secret-path-name" not in exc.value.message


def test_previous_entry_is_numbered() -> None:
    environ = {"SLUICE_KEK": b64(NEW), "SLUICE_KEK_PREVIOUS": f"{b64(OLD)},{b64(b'k' * 16)}"}
    with pytest.raises(ConfigError, match=r"SLUICE_KEK_PREVIOUS \(entry 2\)"):
        load_keks(environ)


@pytest.mark.parametrize(
    ("name", "file_name"),
    [("SLUICE_KEK", "SLUICE_KEK_FILE"), ("SLUICE_KEK_PREVIOUS", "SLUICE_KEK_PREVIOUS_FILE")],
)
def test_a_value_and_a_file_together_are_refused(tmp_path: Path, name: str, file_name: str) -> None:
    (tmp_path / "kek").write_text(b64(OLD))
    environ = {"SLUICE_KEK": b64(NEW), name: b64(NEW), file_name: str(tmp_path / "kek")}
    with pytest.raises(ConfigError, match="not both") as exc:
        load_keks(environ)
    assert b64(NEW) not in exc.value.message


def test_blank_kek_is_refused_but_blank_previous_list_is_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SLUICE_KEK must be base64 of 32 bytes"):
        load_keks({"SLUICE_KEK": "  \n"})
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="SLUICE_KEK_FILE must be base64 of 32 bytes"):
        load_keks({"SLUICE_KEK_FILE": str(tmp_path / "empty")})
    (tmp_path / "blank").write_text("\n \n")
    for environ in ({"SLUICE_KEK_PREVIOUS": " , "}, {"SLUICE_KEK_PREVIOUS_FILE": str(tmp_path / "blank")}):
        vault = load_keks({"SLUICE_KEK": b64(NEW), **environ})
        assert vault is not None
        assert vault.open(vault.seal(SECRET, ROW), ROW) == SECRET
