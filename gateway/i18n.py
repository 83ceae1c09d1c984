"""What a technician reads, in Chinese or English: gettext catalogs in gateway/locale.

The language is `[station] language` when the station file sets it (a service started by
systemd gets the box's LANG, often en_GB on a Raspberry Pi image, whatever the station's
technicians read), else the environment's (LANGUAGE, LC_ALL, LC_MESSAGES, LANG, as gettext
looks), else English. Messages are marked `_("...")` where they are used and translated
then; a table built at import marks its texts with `N_` and translates them where shown.
Placeholders are named (`{device}`) so that a translation may put them in its own order.
The catalogs are extracted and compiled with Babel (docs/i18n.md); the compiled `.mo`
files are committed and ship in the wheel, and a test fails when one lacks a translation.
"""

from __future__ import annotations

import gettext
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DOMAIN",
    "LANGUAGES",
    "LOCALE_DIR",
    "N_",
    "Message",
    "_",
    "language",
    "language_from_environment",
    "normalise",
    "use_language",
]

DOMAIN = "care_gateway"
LOCALE_DIR = Path(__file__).with_name("locale")
LANGUAGES = ("en", "zh_CN")  # English is the source text; zh_CN the complete translation
_ENVIRONMENT = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")

_catalog: gettext.NullTranslations = gettext.NullTranslations()


def _(message: str) -> str:
    """The message in the station's language."""
    return _catalog.gettext(message)


def language() -> str:
    """The language in use ("en" or "zh_CN"), as the chosen catalog says."""
    return normalise(_catalog.info().get("language", "")) or "en"


def N_(message: str) -> str:  # (gettext's own name for it)
    """Marks a text for the catalog where it is defined; `_()` translates it where it is shown."""
    return message


@dataclass(frozen=True)
class Message:
    """One message for two readers: the technician's journal, in the station's language
    (`local`), and an event or the status for the platform, always in English (`english`):
    a device's reason for going offline is both."""

    template: str  # marked with N_ where it is made
    values: dict[str, Any] = field(default_factory=dict)

    def english(self) -> str:
        return self.template.format(**self.values)

    def local(self) -> str:
        return _(self.template).format(**self.values)


def normalise(name: str) -> str | None:
    """'zh_CN.UTF-8', 'zh-cn', 'zh_SG', 'zh' -> 'zh_CN'; 'en_GB.UTF-8' -> 'en'; 'C', 'POSIX',
    'C.UTF-8', '' and languages without a catalog -> None (Traditional Chinese is read better in
    Simplified Chinese than in English)."""
    base = name.split(".", 1)[0].split("@", 1)[0].replace("-", "_").lower()
    if base.startswith("zh"):
        return "zh_CN"
    if base.startswith("en"):
        return "en"
    return None


def language_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The first language the environment names that has a catalog, as gettext looks."""
    env = os.environ if environ is None else environ
    for variable in _ENVIRONMENT:
        value = env.get(variable, "")
        if not value:
            continue
        for name in value.split(":"):  # (LANGUAGE may list several)
            found = normalise(name)
            if found:
                return found
        if variable != "LANGUAGE":  # the first of LC_ALL, LC_MESSAGES, LANG that is set decides
            return None
    return None


def use_language(station_language: str | None = None) -> str:
    """Set the language (see module doc) and return it."""
    global _catalog
    language = station_language or language_from_environment() or "en"
    _catalog = (
        gettext.NullTranslations()
        if language == "en"
        else gettext.translation(DOMAIN, LOCALE_DIR, languages=[language], fallback=True)
    )
    return language


use_language()  # (the environment's, until a station file says otherwise)
