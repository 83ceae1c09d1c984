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
        None, False, True, {"temperature": 25.06, "humidity": 50.55}, (), counter=0x33221100
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
    assert decode_bthome(H("40 65 01"), "x", None) == AdvertError("unknown BTHome object id 0x65")  # past 0x64
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


def plain(objects: str, trigger: bool = False) -> bytes:
    return bytes([0x44 if trigger else 0x40]) + H(objects)


def test_every_bthome_v2_object_is_known_so_none_hides_the_ones_after_it() -> None:
    from drivers.adverts import BTHOME_OBJECTS

    defined = set(BTHOME_OBJECTS) | {0x00, 0x3A, 0x3C, 0x53, 0x54}  # + packet id, button, dimmer, text, raw
    assert defined == set(range(0x00, 0x30)) | set(range(0x3A, 0x3B)) | set(range(0x3C, 0x65))
    # a sensor with a "light" (0x1E) object before its humidity and temperature
    h_and_t = plain("00 21 01 5E 1E 01 2E 32 45 E1 00")
    assert decode_bthome(h_and_t, "x", None) == BTHomePacket(
        0x21, False, False, {"battery": 94, "light": True, "humidity": 50, "temperature": 22.5}, ()
    )
    door = plain("00 05 01 64 1A 01 2D 00")  # a door-and-window contact: open door, closed window
    assert decode_bthome(door, "x", None) == BTHomePacket(
        5, False, False, {"battery": 100, "door": True, "window": False}, ()
    )
    # bthome.io's text example ("Hello World!"), a raw object, a signed 1-byte temperature
    assert decode_bthome(plain("53 0C 48 65 6C 6C 6F 20 57 6F 72 6C 64 21 54 02 AB CD 57 EC", True), "x", None) == (
        BTHomePacket(None, True, False, {"text": "Hello World!", "raw": "abcd", "temperature": -20}, ())
    )
    assert decode_bthome(plain("53 0C 48 65"), "x", None) == AdvertError("BTHome object 0x53 (text/raw) cut short")


def test_a_property_sent_twice_keeps_both_values() -> None:
    assert decode_bthome(plain("02 CA 09 02 CF 09"), "x", None) == BTHomePacket(  # bthome-ble's double temperature
        None, False, False, {"temperature": 25.06, "temperature_2": 25.11}, ()
    )


def test_a_button_that_was_not_pressed_is_no_event() -> None:
    assert decode_bthome(plain("00 21 01 5E 3A 00", True), "x", None) == BTHomePacket(
        0x21, True, False, {"battery": 94}, ()
    )
    # a two-button remote: the first not pressed, the second long-pressed; a dimmer turned 3 steps right
    assert decode_bthome(plain("3A 00 3A 04 3C 02 03", True), "x", None).events == ("long_press", "rotate_right_3")  # type: ignore[union-attr]


def test_an_encrypted_packet_that_carries_its_mac_is_decrypted_with_that_mac() -> None:
    from simulators import wearables

    objects = H("00 07 01 5A 3A 01")
    packet = wearables.bthome_encrypt(objects, KEY, MAC, counter=7, trigger=True, mac_included=True)
    assert packet[0] == 0x47  # v2, encrypted, MAC included, trigger-based
    assert packet[1:7] == H("A5 80 8F E6 48 54")  # the MAC, reversed
    random_address = "7A:11:22:33:44:55"  # what the radio saw: a resolvable private address
    assert decode_bthome(packet, random_address, KEY) == BTHomePacket(7, True, True, {"battery": 90}, ("press",), 7)
    assert decode_bthome(packet[:5], random_address, KEY) == AdvertError(
        "BTHome advertisement cut short in its MAC address"
    )
