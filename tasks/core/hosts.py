"""Host names in the one spelling a resolver gives them, so rules about hosts match them.

Every fetch in this pipeline resolves a host with ``getaddrinfo``, which encodes it with
Python's IDNA codec: nameprep folds case and full-width letters (``ｌｏｃａｌｈｏｓｔ``
resolves as ``localhost``), and the ideographic and full-width full stops separate labels.
DNS resolves a name with one trailing root dot, its fully qualified form, to the same
addresses. So ``Spam.Example.``, ``spam．example`` and ``ｓｐａｍ.example`` all reach
``spam.example``, and ``bücher.example`` is ``xn--bcher-kva.example``. A rule comparing host
strings (the curate blocklist) compares ``canonical_host`` of both sides.
"""

from __future__ import annotations

import ipaddress
import re

# After IDNA encoding: labels of letters, digits, '-' and '_' (seen in real host names).
_DNS_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


def canonical_host(host: str) -> str | None:
    """``host`` IDNA-encoded (ASCII, punycode labels), lower case, without a trailing root
    dot; None where the codec refuses it (an empty or over-long label): no fetch reaches such
    a name, since resolving it fails the same way."""
    try:
        name = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    name = name.removesuffix(".")
    return name or None


def blocked_domain(host: str, domains: frozenset[str]) -> str | None:
    """The listed domain ``host`` is, or is a subdomain of (compared as a resolver spells
    both; ``domains`` as ``blocklist_domain`` gives them); None when it is on no list. The
    fetch's twin of the curate rule's SQL match (sql/curate/rules.sql)."""
    name = canonical_host(host)
    if name is None or not domains:
        return None
    labels = name.split(".")
    for start in range(len(labels)):
        if (suffix := ".".join(labels[start:])) in domains:
            return suffix
    return None


def blocklist_domain(entry: str) -> str:
    """A blocklist entry as ``canonical_host`` spells hosts: a domain name (``spam.example``;
    a leading ``.`` or ``*.`` is accepted and means the same, the domain and its subdomains)
    or an IP address. Raises ValueError naming the entry for anything else (a URL, a path, a
    name no resolver accepts), which would otherwise never match and let every host pass."""
    bare = entry.strip().removeprefix("*.").lstrip(".")
    name = canonical_host(bare) if bare else None
    if name is not None and (_DNS_NAME.fullmatch(name) or _is_ip(name)):
        return name
    raise ValueError(
        f"url_blocklist entry {entry!r} is not a domain name or an IP address "
        "(write spam.example, not a URL or a path)"
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
