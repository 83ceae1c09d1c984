"""BLE advertisements against shared/protocols.md §4 and bthome.io's encryption example."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers.adverts import (
    AdFields,
    AdvertError,
    BTHomePacket,
    IBeacon,
    decode_advertisement,
    decode_bthome,
    parse_ad,
    uuid16,
)

H = bytes.fromhex
BTHOME_UUID = uuid16(0xFCD2)
DIY_SENSOR = H("02 01 06 0B 09 44 49 59 2D 73 65 6E 73 6F 72 0A 16 D2 FC 40 02 C4 09 03 BF 13")
SOS_PRESS = H("02 01 06 0A 16 D2 FC 44 00 09 01 5A 3A 01")
IBEACON = H("02 01 06 1A FF 4C 00 02 15 E2 C5 6D B5 DF FB 48 D2 B0 60 D0 F5 A7 10 96 E0 00 01 00 04 C5")
# bthome.io/encryption: 02CA09 03BF13 with key 231d39c1..., MAC 5448E68F80A5, counter 00112233
ENCRYPTED = H("41 a4 72 66 c9 5f 73 00 11 22 33 78 23 72 14")
KEY = H("231d39c1d7cc1ab1aee224cd096db932")
MAC = "54:48:E6:8F:80:A5"


def decode_raw(raw: bytes, address: str = "AA:BB:CC:DD:EE:01", key: bytes | None = None) -> list[object]:
    fields = parse_ad(raw)
    assert fields is not None
    return list(decode_advertisement(address, fields.manufacturer_data, fields.service_data, key))


def test_spec_advertisements() -> None:
    assert parse_ad(DIY_SENSOR) == AdFields(
        local_name="DIY-sensor", service_data={BTHOME_UUID: H("40 02 C4 09 03 BF 13")}
    )
    assert decode_raw(DIY_SENSOR) == [BTHomePacket(None, False, False, {"temperature": 25.0, "humidity": 50.55}, ())]
    assert decode_raw(SOS_PRESS) == [BTHomePacket(9, True, False, {"battery": 90}, ("press",))]
    assert decode_raw(IBEACON) == [IBeacon("e2c56db5-dffb-48d2-b060-d0f5a71096e0", 1, 4, -59)]


def test_encrypted_bthome_with_the_right_and_a_wrong_key() -> None:
    assert decode_bthome(ENCRYPTED, MAC, KEY) == BTHomePacket(
        None, False, True, {"temperature": 25.06, "humidity": 50.55}, ()
    )
    assert decode_bthome(ENCRYPTED, MAC, bytes(16)) == AdvertError(
        "BTHome decryption failed: wrong bind_key, or the advertisement was tampered with"
    )
    assert decode_bthome(ENCRYPTED, MAC, None) == AdvertError(
        "encrypted BTHome advertisement but no bind_key configured for this device"
    )


def test_simulator_encoder_matches_the_spec() -> None:
    from simulators import wearables

    assert wearables.bthome_service_data(packet_id=9, battery=90, button=1, trigger=True) == SOS_PRESS[7:]
    assert wearables.bthome_encrypt(H("02 CA 09 03 BF 13"), KEY, MAC, counter=0x33221100) == ENCRYPTED
    assert wearables.ibeacon("e2c56db5-dffb-48d2-b060-d0f5a71096e0", 1, 4, -59) == IBEACON[7:]


def test_unknown_object_and_truncation_are_errors() -> None:
    assert decode_bthome(H("40 F0 01"), "x", None) == AdvertError("unknown BTHome object id 0xf0")
    assert decode_bthome(H("40 02 C4"), "x", None) == AdvertError("BTHome object 0x02 (temperature) cut short")
    assert decode_bthome(H("20 01 5A"), "x", None) == AdvertError("BTHome version 1 (only v2 is supported)")
    assert parse_ad(H("05 09 41")) is None  # a length running past the end


@given(st.binary(max_size=62))
def test_fuzz_raw_advertisements_never_raise(raw: bytes) -> None:
    fields = parse_ad(raw)
    if fields is not None:
        decode_advertisement("AA:BB:CC:DD:EE:01", fields.manufacturer_data, fields.service_data, KEY)


@given(payload=st.binary(max_size=40), key=st.none() | st.binary(min_size=16, max_size=16))
def test_fuzz_bthome_payloads_never_raise(payload: bytes, key: bytes | None) -> None:
    decode_bthome(payload, MAC, key)
