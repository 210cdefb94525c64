"""Keeping the daemon's secrets out of what it says: one :class:`Scrubber`, built once from every secret the
configuration holds, removes each of them from a text in every form the daemon can know of.

A backend that rejects a request often quotes what it rejected: the ``Authorization`` header it was sent
(``Bearer KEY``, or ``Basic`` and the base64 of ``user:password``), or the key in OpenAI's partial form
(``sk-proj-****...abcd``).  Its error text reaches clients, logs and ``/ready``, so it is scrubbed on the
way: the verbatim forms first, then the partial ones.

The partial forms are a mask (``...``, ``…`` or two or more ``*``, in any run) with, around it, the first
characters of a secret before it and/or its last characters after it.  What counts, so that ordinary
text is left alone:

- a secret shorter than :data:`MIN_SECRET` characters is not looked for at all (it would match words);
- a prefix and a suffix together: at least :data:`MIN_PREFIX` and :data:`MIN_SUFFIX` characters;
- a suffix alone (``***abcd``): at least :data:`MIN_SUFFIX_ALONE` characters;
- a prefix alone (``sk-secret-…``): at least :data:`MIN_PREFIX_ALONE` characters, and not a plain word
  (a secret that starts ``password`` leaves ``password...`` alone);
- the prefix starts, and the suffix ends, where a word would (not inside a run of letters and digits).

Everything here is pure (no I/O): scrubbing runs on error paths, never on a healthy stream's chunks.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs

REDACTED = "[redacted]"
MIN_SECRET = 6
MIN_PREFIX = 3
MIN_SUFFIX = 2
MIN_PREFIX_ALONE = 6
MIN_SUFFIX_ALONE = 4

# Where a partial form hides the middle of a secret: OpenAI prints ``...`` or a run of ``*``, some ``…``.
_MASK = re.compile(r"(?:\*{2,}|\.{3,}|…)[*.…]*")


def redact_url(url: str) -> str:
    """The URL without ``user:password@``, for logs and messages (host and port kept as written, so it
    works for a URL whose port does not parse, as in the message saying so)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def basic_credentials(url: str) -> str | None:
    """The base64 of ``user:password`` in the URL (what ``Authorization: Basic`` carries), or None."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return base64.b64encode(pair.encode()).decode("ascii")


def backend_secrets(url: str, api_key: str | None) -> list[str]:
    """The secrets one backend's configuration holds: its key, and the URL's credentials as given and as
    the Basic header carries them.

    The user name counts on its own only without a password (a token given as the user name, LangChain's
    ``http://TOKEN@host``); beside a password it is an identity, redacted with it in ``user:password``.
    The Bearer form is the key itself after ``Bearer ``.
    """
    found = [api_key] if api_key else []
    basic = basic_credentials(url)
    if basic is not None:
        parts = urlsplit(url)
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        found += [f"{user}:{password}", password or user, basic, basic.rstrip("=")]
    return [secret for secret in found if secret]


@attrs.frozen
class _Secret:
    """One secret, and where each of its characters stands, for finding its partial forms quickly."""

    text: str
    # For each character, the prefix lengths k (k >= MIN_PREFIX) whose last character it is, longest first.
    prefix_ends: dict[str, tuple[int, ...]]
    # For each character, the suffix lengths m (m >= MIN_SUFFIX) whose first character it is, longest first.
    suffix_starts: dict[str, tuple[int, ...]]

    @classmethod
    def of(cls, text: str) -> _Secret:
        size = len(text)
        ends: dict[str, list[int]] = {}
        starts: dict[str, list[int]] = {}
        for k in range(size - 1, MIN_PREFIX - 1, -1):  # a prefix shorter than the whole secret
            ends.setdefault(text[k - 1], []).append(k)
        for m in range(size - 1, MIN_SUFFIX - 1, -1):
            starts.setdefault(text[size - m], []).append(m)
        return cls(
            text,
            {char: tuple(found) for char, found in ends.items()},
            {char: tuple(found) for char, found in starts.items()},
        )

    def prefix_before(self, text: str, at: int) -> int:
        """The length of the longest prefix of this secret ending at ``at`` and starting a word; 0: none."""
        if at == 0:
            return 0
        for k in self.prefix_ends.get(text[at - 1], ()):
            start = at - k
            if start >= 0 and text.startswith(self.text[:k], start) and _word_edge(text, start - 1):
                return k
        return 0

    def suffix_after(self, text: str, at: int) -> int:
        """The length of the longest suffix of this secret starting at ``at`` and ending a word; 0: none."""
        if at >= len(text):
            return 0
        for m in self.suffix_starts.get(text[at], ()):
            if text.startswith(self.text[-m:], at) and _word_edge(text, at + m):
                return m
        return 0

    def shown(self, prefix: int, suffix: int) -> bool:
        """Whether a prefix and a suffix of these lengths around a mask are this secret's partial form."""
        if prefix and suffix:
            return True  # each is at least MIN_PREFIX / MIN_SUFFIX long by construction
        if prefix:
            return prefix >= MIN_PREFIX_ALONE and not self.text[:prefix].isalpha()
        return suffix >= MIN_SUFFIX_ALONE


def _word_edge(text: str, index: int) -> bool:
    """True when ``text[index]`` is outside the text or not a letter or digit."""
    return index < 0 or index >= len(text) or not text[index].isalnum()


def _written_forms(secret: str) -> set[str]:
    """The secret as written in plain text and inside a JSON string (escaped, ``/`` possibly as ``\\/``)."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    return forms | {form.replace("/", "\\/") for form in forms}


class Scrubber:
    """Every configured secret, and the one method that removes each of them from a text.

    The client keys change on SIGHUP (:meth:`set_client_keys`); the backends' secrets are fixed at start.
    """

    def __init__(self, secrets: Iterable[str] = (), *, client_keys: Iterable[str] = ()) -> None:
        self._fixed = tuple(secrets)
        self._secrets: Sequence[_Secret] = ()
        self._literals: Sequence[str] = ()
        self.set_client_keys(client_keys)

    def set_client_keys(self, client_keys: Iterable[str]) -> None:
        texts = {secret for secret in (*self._fixed, *client_keys) if len(secret) >= MIN_SECRET}
        self._secrets = tuple(_Secret.of(text) for text in sorted(texts, key=len, reverse=True))
        literals = {form for text in texts for form in _written_forms(text)}
        # Longest first: a secret that contains another (``user:password``, ``password``) goes whole.
        self._literals = tuple(sorted(literals, key=lambda form: (-len(form), form)))

    def scrub(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``[redacted]``."""
        if not self._secrets:
            return text
        for literal in self._literals:
            if literal in text:
                text = text.replace(literal, REDACTED)
        return self._scrub_partial(text)

    def scrub_bytes(self, data: bytes) -> bytes:
        """The same for bytes in UTF-8 (anything else passes through as it was)."""
        if not self._secrets:
            return data
        text = data.decode("utf-8", "surrogateescape")
        scrubbed = self.scrub(text)
        return data if scrubbed == text else scrubbed.encode("utf-8", "surrogateescape")

    def _scrub_partial(self, text: str) -> str:
        spans: list[tuple[int, int]] = []
        for mask in _MASK.finditer(text):
            start, end = mask.span()
            widest: tuple[int, int] | None = None
            for secret in self._secrets:
                prefix, suffix = secret.prefix_before(text, start), secret.suffix_after(text, end)
                if (prefix or suffix) and secret.shown(prefix, suffix):
                    span = (start - prefix, end + suffix)
                    if widest is None or span[1] - span[0] > widest[1] - widest[0]:
                        widest = span
            if widest is not None:
                spans.append(widest)
        if not spans:
            return text
        merged: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        pieces: list[str] = []
        kept = 0
        for start, end in merged:
            pieces += [text[kept:start], REDACTED]
            kept = end
        pieces.append(text[kept:])
        return "".join(pieces)
