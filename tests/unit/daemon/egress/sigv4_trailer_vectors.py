#!/usr/bin/env python3
"""Computes the aws-chunked-with-trailer vectors of test_sigv4.c
(test_trailer_vectors) straight from the algorithm of AWS's "Signature
calculations for trailing headers (chunked uploads)" page, with Python's
hashlib/hmac only (independent of src/daemon/egress/sigv4.c):

  seed     = the header signature; payload line
             STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER
  chunk_i  = HMAC(kSigning, "AWS4-HMAC-SHA256-PAYLOAD\\n" date "\\n" scope "\\n"
                  prev "\\n" sha256("") "\\n" sha256(chunk data))
  trailer  = HMAC(kSigning, "AWS4-HMAC-SHA256-TRAILER\\n" date "\\n" scope "\\n"
                  final-chunk-signature "\\n" sha256("x-amz-checksum-crc32:" b64 "\\n"))

The request is the S3 reference's chunked-upload example (65 KiB of 'a' in
a 64 KiB and a 1 KiB chunk, same key, date, bucket) with the trailer
headers the SDKs add. Run it and paste its output into test_sigv4.c."""
import base64
import hashlib
import hmac
import zlib

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PH_SECRET = "AWS_SECRET_ACCESS_KEY"
AMZDATE, DATE, REGION, SERVICE = "20130524T000000Z", "20130524", "us-east-1", "s3"
SCOPE = "/".join([DATE, REGION, SERVICE, "aws4_request"])
EMPTY = hashlib.sha256(b"").hexdigest()
DATA = b"a" * (65536 + 1024)
CHUNKS = [DATA[:65536], DATA[65536:], b""]


def hm(k, m):
    return hmac.new(k, m.encode(), hashlib.sha256)


def key(secret):
    k = hm(("AWS4" + secret).encode(), DATE).digest()
    for p in (REGION, SERVICE, "aws4_request"):
        k = hm(k, p).digest()
    return k


def seed(secret):
    headers = [("content-encoding", "aws-chunked"), ("host", "s3.amazonaws.com"),
               ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"),
               ("x-amz-date", AMZDATE), ("x-amz-decoded-content-length", "66560"),
               ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
               ("x-amz-trailer", "x-amz-checksum-crc32")]
    signed = ";".join(k for k, _ in headers)
    creq = "\n".join(["PUT", "/examplebucket/chunkObject.txt", "",
                      "".join("%s:%s\n" % kv for kv in headers), signed,
                      "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"])
    sts = "\n".join(["AWS4-HMAC-SHA256", AMZDATE, SCOPE, hashlib.sha256(creq.encode()).hexdigest()])
    return hm(key(secret), sts).hexdigest()


def chain(secret, first):
    k, prev, out = key(secret), first, []
    for c in CHUNKS:
        prev = hm(k, "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", AMZDATE, SCOPE, prev, EMPTY,
                                hashlib.sha256(c).hexdigest()])).hexdigest()
        out.append(prev)
    trailer = "x-amz-checksum-crc32:%s\n" % CRC
    out.append(hm(k, "\n".join(["AWS4-HMAC-SHA256-TRAILER", AMZDATE, SCOPE, prev,
                                hashlib.sha256(trailer.encode()).hexdigest()])).hexdigest())
    return out


CRC = base64.b64encode(zlib.crc32(DATA).to_bytes(4, "big")).decode()
print("#define TR_CRC \"%s\"" % CRC)
print("#define TR_SEED \"%s\"" % seed(SECRET))
for n, s in zip(("TR_CH1", "TR_CH2", "TR_CH3", "TR_SIG"), chain(SECRET, seed(SECRET))):
    print("#define %s \"%s\"" % (n, s))
# The same body signed by a guest with the placeholder secret, from the
# seed 64 x '1' (what the proxy verifies before re-signing).
for n, s in zip(("PH_CH1", "PH_CH2", "PH_CH3", "PH_SIG"), chain(PH_SECRET, "1" * 64)):
    print("#define %s \"%s\"" % (n, s))
