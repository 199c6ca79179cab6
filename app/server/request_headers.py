"""A request's header block, parsed without the email package when it is plain.

gevent's pywsgi reads headers with ``http.client.parse_headers``: the lines are read
(``_read_headers``: the line length and header count limits), then handed to the
``email`` package's feed parser, which costs more than the rest of reading a request. A
block whose every line is ``name:value`` with a plain token for a name (what any HTTP
client sends) gives the same message by splitting each line at its first colon, as the
feed parser's compat32 policy does (``header_source_parse``: the value without leading
blanks and the line end). Anything else (a folded line, a name with a blank, a stray
CR, no colon) goes to the email parser as before, so what an odd request gets is the
stock answer.
"""

from __future__ import annotations

import email.parser
import io
import re
from http import client

from gevent.pywsgi import headers_factory

#: A line the feed parser reads as one whole header: a non-empty name of printable
#: characters other than the colon (its headerRE), then the colon.
_PLAIN = re.compile(rb"[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r?\n\Z")

_Message = type(headers_factory(io.BytesIO(b"\r\n")))  # gevent's OldMessage
_read_headers = getattr(client, "_read_headers", None)  # without it (another Python): the stock parser


def parse_headers(fp, *args):
    """What gevent's ``headers_factory(fp)`` returns, for the header block at ``fp``."""
    if _read_headers is None:
        return headers_factory(fp, *args)
    try:
        lines = _read_headers(fp)
    except client.LineTooLong:
        message = _Message()
        message.status = "Line too long"  # as gevent's headers_factory answers it
        return message
    plain = _PLAIN.match
    for line in lines[:-1]:
        if plain(line) is None:
            text = b"".join(lines).decode("iso-8859-1")
            return email.parser.Parser(_class=_Message).parsestr(text)
    message = _Message()
    for line in lines[:-1]:
        name, _, value = line.decode("iso-8859-1").partition(":")
        message.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))
    message.set_payload("")  # the feed parser's empty body after the blank line
    return message
