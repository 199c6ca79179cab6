"""The fast header parser (app/server/request_headers.py) gives gevent's stock parser's
message for every header block: the plain ones it splits itself, the others it hands over."""

from __future__ import annotations

import io

import pytest
from gevent.pywsgi import headers_factory

from app.server.request_headers import parse_headers

BLOCKS = [
    b"Host: 127.0.0.1:8000\r\nContent-Type: application/json\r\nContent-Length: 60\r\nCookie: a=b; c=d\r\n\r\nBODY",
    b"Host: x\r\n\r\n",
    b"\r\n",
    b"",
    b"Host: x\r\nX-A:  spaced  \r\nX-B:\r\n\r\n",
    b"Host: x\nX: y\n\n",
    b"Host: x\r\nX:\tv\t\r\nhost: dup\r\nHOST: third\r\n\r\n",
    b"Host: x\r\nX: \xe9\xff\x00\r\n\r\n",
    b"Host: x\r\nX: a:b:c\r\n\r\n",
    # Not plain: the email parser's answer, whatever it is.
    b"Host: x\r\nX-Fold: a\r\n b\r\n\r\n",
    b"Host: x\r\nBad Name: v\r\n\r\n",
    b"Host: x\r\nnocolon\r\nY: z\r\n\r\n",
    b"Host: x\r\n: empty name\r\n\r\n",
    b"Host: x\r\nX: a\rb\r\n\r\n",
    b"From me\r\nHost: x\r\n\r\n",
    b"Host: x\r\nX: y",
    b"Host: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
    b"Host: x\r\n\tleading: tab\r\n\r\n",
]


def state(message) -> dict:
    defects = [repr(defect) for defect in message.defects]  # defects compare by identity
    return {**vars(message), "defects": defects, "headers": list(message.headers), "type": message.typeheader}


@pytest.mark.parametrize("block", BLOCKS)
def test_the_same_message_as_gevents_parser(block):
    assert state(parse_headers(io.BytesIO(block))) == state(headers_factory(io.BytesIO(block)))


@pytest.mark.parametrize("block", BLOCKS)
def test_the_same_bytes_are_left_for_the_body(block):
    ours, stock = io.BytesIO(block), io.BytesIO(block)
    parse_headers(ours)
    headers_factory(stock)
    assert ours.read() == stock.read()


def test_too_many_headers_are_refused_as_before():
    block = b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n"
    with pytest.raises(Exception) as ours:
        parse_headers(io.BytesIO(block))
    with pytest.raises(Exception) as stock:
        headers_factory(io.BytesIO(block))
    assert type(ours.value) is type(stock.value) and str(ours.value) == str(stock.value)
