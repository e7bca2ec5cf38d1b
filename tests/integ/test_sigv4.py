#!/usr/bin/python3
"""AWS SigV4 re-signing through `nilbox proxy` with real clients (boto3,
botocore's signer, the AWS CLI, curl --aws-sigv4, a hand-written aws-chunked
uploader) against a fake S3 / Bedrock upstream (fake_aws.py) that verifies
every signature with the REAL credentials. The clients only ever hold the
placeholders AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN.

Also: a request signed with anything else passes unchanged (and the fake
refuses it), the real key id and session token echoed back are redacted
(A5), a body over the hold cap without a payload hash gets 413, and no real
value reaches the daemon's files or logs."""
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy_env import ProxyEnv, run_suite, with_auth  # noqa: E402
from daemon_harness import status_of  # noqa: E402
import fake_aws  # noqa: E402

REAL_AKID = "AKIAREALKEY7Q2W9E4R1"
REAL_SECRET = "rEaLsEcReT/k3y+Zx81Qp0LmNoPqRsTuVwXyZ0123"
REAL_TOKEN = "IQoJb3JpZ2luX2VjEREALSESSIONTOKEN/abc+def=="
PH_AKID, PH_SECRET, PH_TOKEN = "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"
S3 = "s3.amazonaws.com"
S3_VHOST = "bkt.s3.us-east-1.amazonaws.com"  # the AWS CLI's virtual-hosted style
BEDROCK = "bedrock-runtime.us-east-1.amazonaws.com"
AWS_CLI = "/usr/bin/aws"

E = None
PX = None
FAKE = None
FAKE_LOG = None
SEEN = []  # everything the client side received, checked for real values (A5)


def setup():
    global E, PX, FAKE, FAKE_LOG
    E = ProxyEnv().__enter__()
    tmp = E.tmp
    # A leaf for the AWS names from the test upstream CA the proxy trusts.
    key, csr, crt, ext = (os.path.join(tmp, "aws." + x) for x in ("key", "csr", "pem", "ext"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=" + S3)
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:%s,DNS:%s,DNS:*.%s,DNS:%s\n"
                % (S3, BEDROCK, S3, S3_VHOST))
    run("openssl", "x509", "-req", "-in", csr, "-CA", E.up_ca,
        "-CAkey", os.path.join(tmp, "upstream-ca.key"), "-CAcreateserial", "-out", crt,
        "-days", "2", "-extfile", ext)
    FAKE_LOG = os.path.join(tmp, "aws.jsonl")
    FAKE = subprocess.Popen([sys.executable, fake_aws.__file__, "--cert", crt, "--key", key,
                             "--log", FAKE_LOG, "--akid", REAL_AKID, "--secret", REAL_SECRET,
                             "--token", REAL_TOKEN],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    E.ups.append(FAKE)  # stopped with the environment
    port = int(FAKE.stdout.readline().split()[1])
    E.secret("AWS_PROD", "%s\n%s\n%s\n" % (REAL_AKID, REAL_SECRET, REAL_TOKEN))
    r = E.cli("--json", "secret", "bind-aws", "AWS_PROD", "--host", "*.amazonaws.com")
    b = json.loads(r.stdout)
    assert b["placement"] == "sigv4" and b["region"] is None, b
    E.rule("allow", "*.amazonaws.com:443")
    E.rule("allow", "127.0.0.1:%d" % port)
    PX = E.proxy(vm="a", extra_resolve=["%s:443:127.0.0.1:%d" % (n, port)
                                        for n in (S3, BEDROCK, S3_VHOST)])


def fake_rows():
    # Only whole lines: the fake server may be appending one right now.
    with open(FAKE_LOG) as f:
        return [json.loads(l) for l in f if l.endswith("\n") and l.strip()]


def last_row():
    return fake_rows()[-1]


def saw(*chunks):
    for c in chunks:
        SEEN.append(c if isinstance(c, bytes) else str(c).encode())


def boto_client(service="s3", **cfg):
    import boto3
    from botocore.config import Config
    return boto3.client(
        service, region_name="us-east-1", aws_access_key_id=PH_AKID,
        aws_secret_access_key=PH_SECRET, aws_session_token=PH_TOKEN, verify=E.ca_pem,
        config=Config(proxies={"https": PX.url}, s3=dict(addressing_style="path", **cfg),
                      signature_version="s3v4" if service == "s3" else None,
                      retries={"max_attempts": 1}))


def test_boto3_put_get_unsigned_payload():
    s3 = boto_client()
    data = os.urandom(300000)
    r = s3.put_object(Bucket="bkt", Key="obj1", Body=data)
    saw(json.dumps(r, default=str))
    # The echoed Authorization (re-signed: the real key id) comes back
    # with the placeholder in its place (A5).
    echoed = r["ResponseMetadata"]["HTTPHeaders"]["x-echo-authorization"]
    assert echoed.startswith("AWS4-HMAC-SHA256 Credential=%s/" % PH_AKID), echoed
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-echo-token"] == PH_TOKEN
    row = last_row()
    assert row["verified"], row
    assert dict((k.lower(), v) for k, v in row["headers"])["x-amz-content-sha256"] == \
        "UNSIGNED-PAYLOAD"
    got = s3.get_object(Bucket="bkt", Key="obj1")["Body"].read()
    assert got == data
    assert last_row()["verified"]


def test_boto3_signed_payload():
    s3 = boto_client(payload_signing_enabled=True)
    data = b"hello signed payload " * 1000
    s3.put_object(Bucket="bkt", Key="obj2", Body=data)
    row = last_row()
    assert row["verified"], row
    h = dict((k.lower(), v) for k, v in row["headers"])
    assert h["x-amz-content-sha256"] == hashlib.sha256(data).hexdigest()
    assert h["x-amz-security-token"] == REAL_TOKEN  # the placeholder was swapped
    assert h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=%s/" % REAL_AKID)


def test_presigned_get():
    s3 = boto_client()
    s3.put_object(Bucket="bkt", Key="pre", Body=b"presigned body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "pre"},
                                    ExpiresIn=600)
    assert PH_AKID in url and PH_TOKEN in url and REAL_AKID not in url
    code, body, r = E.curl(PX, url)
    saw(body, r.stderr)
    assert code == 200 and body == b"presigned body", (code, body, last_row())
    row = last_row()
    assert row["verified"] and REAL_AKID in row["target"], row
    assert PH_TOKEN not in row["target"]


def test_awscli_put_get_presign():
    if not os.path.exists(AWS_CLI):
        raise AssertionError("awscli is not installed (scripts/install-deps.sh)")
    env = dict(os.environ, HTTPS_PROXY=PX.url, AWS_CA_BUNDLE=E.ca_pem,
               AWS_ACCESS_KEY_ID=PH_AKID, AWS_SECRET_ACCESS_KEY=PH_SECRET,
               AWS_SESSION_TOKEN=PH_TOKEN, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
               HOME=E.tmp)
    src = os.path.join(E.tmp, "cli-src")
    with open(src, "wb") as f:
        f.write(os.urandom(100000))
    r = subprocess.run([AWS_CLI, "s3api", "put-object", "--bucket", "bkt", "--key", "cli",
                        "--body", src], env=env, capture_output=True, text=True, timeout=60)
    saw(r.stdout, r.stderr)
    assert r.returncode == 0, (r.stdout, r.stderr, last_row(), E.d.stderr()[-3000:])
    dst = os.path.join(E.tmp, "cli-dst")
    r = subprocess.run([AWS_CLI, "s3api", "get-object", "--bucket", "bkt", "--key", "cli", dst],
                       env=env, capture_output=True, text=True, timeout=60)
    saw(r.stdout, r.stderr)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert open(dst, "rb").read() == open(src, "rb").read()
    r = subprocess.run([AWS_CLI, "s3", "presign", "s3://bkt/cli"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    code, body, _ = E.curl(PX, r.stdout.strip())
    assert code == 200 and body == open(src, "rb").read(), (code, last_row())


def test_curl_aws_sigv4():
    code, body, r = E.curl(PX, "https://%s/bkt/curl-obj" % S3, "-X", "PUT",
                           "--data-binary", "from curl", "--aws-sigv4", "aws:amz:us-east-1:s3",
                           "-u", "%s:%s" % (PH_AKID, PH_SECRET),
                           "-H", "x-amz-security-token: " + PH_TOKEN)
    saw(body, r.stderr)
    assert code == 200, (code, body, last_row())
    assert last_row()["verified"]
    code, body, _ = E.curl(PX, "https://%s/bkt/curl-obj" % S3, "--aws-sigv4",
                           "aws:amz:us-east-1:s3", "-u", "%s:%s" % (PH_AKID, PH_SECRET),
                           "-H", "x-amz-security-token: " + PH_TOKEN)
    assert code == 200 and body == b"from curl", (code, body)


def test_bedrock_body_hash():
    """No x-amz-content-sha256: the signature covers sha256(body), which the
    proxy computes from the held body. botocore's signer and curl."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    import requests
    body = json.dumps({"prompt": "hi " * 20000, "max_tokens": 5}).encode()
    url = "https://%s/model/anthropic.claude-v2:1/invoke" % BEDROCK
    req = AWSRequest(method="POST", url=url, data=body,
                     headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(PH_AKID, PH_SECRET, PH_TOKEN), "bedrock", "us-east-1").add_auth(req)
    p = req.prepare()
    assert "x-amz-content-sha256" not in {k.lower() for k in p.headers}
    r = requests.post(p.url, data=body, headers=dict(p.headers), verify=E.ca_pem,
                      proxies={"https": PX.url}, timeout=30)
    saw(r.content, json.dumps(dict(r.headers)))
    assert r.status_code == 200, (r.text[:300], last_row())
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
    # The echo carries the re-signed Authorization and the real token: the
    # guest gets the placeholders (A5), in the body and in headers.
    assert REAL_AKID not in r.text and REAL_TOKEN not in r.text, r.text[:500]
    assert PH_AKID in r.text and PH_TOKEN in r.text
    assert r.headers.get("x-echo-token") == PH_TOKEN
    # curl signs the path as sent (no second encoding), so it is given one
    # without reserved characters (AWS itself would refuse curl's ':').
    url = "https://%s/model/m1/invoke" % BEDROCK
    code, out, rr = E.curl(PX, url, "--aws-sigv4", "aws:amz:us-east-1:bedrock",
                           "-u", "%s:%s" % (PH_AKID, PH_SECRET),
                           "-H", "x-amz-security-token: " + PH_TOKEN,
                           "-H", "Content-Type: application/json", "--data-binary", '{"a":1}')
    saw(out, rr.stderr)
    assert code == 200, (code, out, last_row())


def test_bedrock_over_cap_413():
    big = os.path.join(E.tmp, "big.json")
    with open(big, "wb") as f:
        f.write(b"x" * (8 * 1024 * 1024 + 1))
    n = len(fake_rows())
    code, body, r = E.curl(PX, "https://%s/model/m/invoke" % BEDROCK, "--aws-sigv4",
                           "aws:amz:us-east-1:bedrock", "-u", "%s:%s" % (PH_AKID, PH_SECRET),
                           "--data-binary", "@" + big)
    assert code == 413, (code, body)
    assert b"body-too-large" in r.stdout or b"8 MiB" in body, body
    assert len(fake_rows()) == n  # nothing went upstream


# ---- aws-chunked, written by hand: no Python SDK sends it ----

def aws_chunked(data, mode, key, amzdate, scope, seed, chunk=65536, corrupt_at=None,
                trailers=None, corrupt_trailer=False):
    """The aws-chunked body of data (mode: one of fake_aws's three STREAMING
    kinds), signed with key from seed when the kind signs. trailers: the
    trailing headers (default: x-amz-checksum-crc32 of data)."""
    signed = mode != fake_aws.UNSIGNED_TRAILER
    out, prev = bytearray(), seed
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    for i, piece in enumerate(pieces):
        if signed:
            sig = fake_aws.chunk_sig(key, amzdate, scope, prev, piece)
            prev = sig
            out += b"%x;chunk-signature=%s\r\n" % (len(piece), (
                "0" * 64 if corrupt_at == i else sig).encode())
        else:
            out += b"%x\r\n" % len(piece)
        if piece:
            out += piece + b"\r\n"
    if mode == fake_aws.STREAMING:
        return bytes(out + b"\r\n")
    if trailers is None:
        trailers = [("x-amz-checksum-crc32", fake_aws.checksum("x-amz-checksum-crc32", data))]
    for n, v in trailers:
        out += b"%s:%s\r\n" % (n.encode(), v.encode())
    if signed:
        tsig = fake_aws.trailer_sig(key, amzdate, scope, prev, trailers)
        out += b"x-amz-trailer-signature:%s\r\n" % ("1" * 64 if corrupt_trailer else tsig).encode()
    return bytes(out + b"\r\n")


def chunked_put(host, path, data, secret=PH_SECRET, chunk=65536, corrupt_at=None,
                mode=fake_aws.STREAMING, trailers=None, corrupt_trailer=False, edit=None):
    """PUT of data as aws-chunked through the proxy, signed with `secret`
    (the placeholder unless told): (status, body). edit(body) -> body
    breaks the framing on purpose."""
    amzdate = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    scope = "%s/us-east-1/s3/aws4_request" % amzdate[:8]
    # The length first (signatures have a fixed size): Content-Length is signed.
    body = aws_chunked(data, mode, b"k" * 32, amzdate, scope, "0" * 64, chunk, trailers=trailers)
    enc_len = len(edit(body) if edit else body)
    headers = [("Host", host), ("x-amz-date", amzdate),
               ("x-amz-content-sha256", mode), ("Content-Encoding", "aws-chunked"),
               ("x-amz-decoded-content-length", str(len(data))),
               ("Content-Length", str(enc_len)), ("x-amz-security-token", PH_TOKEN)]
    signed = "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;" \
             "x-amz-decoded-content-length;x-amz-security-token"
    if mode != fake_aws.STREAMING:
        headers.append(("x-amz-trailer", "x-amz-checksum-crc32"))
        signed += ";x-amz-trailer"
    seed, key = fake_aws.signature(secret, "PUT", path, headers, signed, mode,
                                   amzdate, scope, False)
    body = aws_chunked(data, mode, key, amzdate, scope, seed, chunk, corrupt_at, trailers,
                       corrupt_trailer)
    if edit:
        body = edit(body)
    assert len(body) == enc_len
    auth = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        PH_AKID, scope, signed, seed)
    s = E.tunnel(host, px=PX)
    head = "PUT %s HTTP/1.1\r\n" % path + "".join("%s: %s\r\n" % h for h in headers) + \
        "Authorization: %s\r\n\r\n" % auth
    s.sendall(head.encode())
    try:
        for i in range(0, len(body), 65536):
            s.sendall(body[i:i + 65536])
    except OSError:
        pass  # refused early: the answer is read below
    s.settimeout(60)
    resp = http.client.HTTPResponse(s)
    resp.begin()
    out = resp.read()
    saw(out, json.dumps(resp.getheaders()))
    s.close()
    return resp.status, out


def test_chunked_upload_20mib():
    data = os.urandom(20 * 1024 * 1024)
    st, body = chunked_put(S3, "/bkt/big", data)
    assert st == 200, (st, body[:300], last_row()["why"])
    row = last_row()
    assert row["len"] == len(data) and row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["verified"] and row["why"] == "ok (%d chunks)" % (320 + 1), row["why"]


def test_chunked_bad_chunk_not_resigned():
    """A chunk signed with anything but the placeholder chain goes out as
    sent from there on: the fake refuses the upload."""
    st, body = chunked_put(S3, "/bkt/bad", os.urandom(300000), corrupt_at=2)
    assert st == 403, (st, body[:200])
    assert "chunk signature does not match" in last_row()["why"], last_row()["why"]


def test_signed_trailer_upload():
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER: each chunk and the
    trailer signature re-signed; the fake checks the chains and the CRC."""
    data = os.urandom(3 * 1024 * 1024 + 12345)
    st, body = chunked_put(S3, "/bkt/signed-trailer", data, mode=fake_aws.STREAMING_TRAILER)
    assert st == 200, (st, body[:300], last_row()["why"])
    row = last_row()
    assert row["verified"], row["why"]
    assert row["why"] == "ok (50 chunks, trailer x-amz-checksum-crc32)", row["why"]
    assert row["len"] == len(data) and row["sha256"] == hashlib.sha256(data).hexdigest()
    h = dict((k.lower(), v) for k, v in row["headers"])
    assert h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=%s/" % REAL_AKID)


def test_unsigned_trailer_upload_by_hand():
    """STREAMING-UNSIGNED-PAYLOAD-TRAILER: the header re-signed, the body
    as sent (framing checked), the checksum checked by the fake."""
    data = os.urandom(500000)
    st, body = chunked_put(S3, "/bkt/unsigned-trailer", data, mode=fake_aws.UNSIGNED_TRAILER,
                           chunk=8192)
    assert st == 200, (st, body[:300], last_row()["why"])
    row = last_row()
    assert row["verified"] and row["sha256"] == hashlib.sha256(data).hexdigest(), row["why"]


def refused_upstream(target, n_before):
    """Nothing for target was stored: no verified row since n_before."""
    return not [r for r in fake_rows()[n_before:] if r["target"] == target and r["verified"]]


def test_trailer_refusals():
    """A chunk or trailer signature that is not the placeholder's, a bad
    chunk line, an undeclared trailer: refused by the proxy with a clear
    answer, and the upload never completes upstream. A trailer whose CRC
    is wrong (signed right) is the upstream's to refuse."""
    data = os.urandom(300000)
    S, U = fake_aws.STREAMING_TRAILER, fake_aws.UNSIGNED_TRAILER
    cases = [
        ("/bkt/r1", dict(mode=S, corrupt_at=2), 403, b"a chunk signature does not verify"),
        ("/bkt/r2", dict(mode=S, corrupt_trailer=True), 403, b"the trailer signature does not"),
        ("/bkt/r3", dict(mode=U, edit=lambda b: b.replace(b"10000\r\n", b"1000g\r\n", 1)),
         400, b"a chunk line is not a hexadecimal size"),
        ("/bkt/r4", dict(mode=U, trailers=[("x-amz-checksum-sha256", "AAAA")]), 400,
         b"does not declare"),
        ("/bkt/r5", dict(mode=S, trailers=[("x-amz-checksum-crc32", "AAAAAA==")]), 403,
         b"trailing checksum x-amz-checksum-crc32 does not match"),
    ]
    for target, kw, want, text in cases:
        n = len(fake_rows())
        st, body = chunked_put(S3, target, data, **kw)
        assert st == want and text in body, (target, st, body[:400])
        assert refused_upstream(target, n), (target, fake_rows()[n:])
    # The proxy's refusals are audited.
    rows = [r for r in E.audit("refusal")
            if (r.get("detail") or {}).get("reason") in ("sigv4-chunk-signature", "bad-aws-chunked")]
    assert len(rows) >= 3, E.audit("refusal")


# ---- the real AWS SDK for JavaScript (@aws-sdk/client-s3, tests/integ/s3_node) ----

S3_NODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "s3_node")


def s3_node(*args):
    r = subprocess.run(["node", os.path.join(S3_NODE, "s3.mjs"), PX.url, E.ca_pem,
                        "https://" + S3, *args], capture_output=True, text=True, timeout=240,
                       cwd=S3_NODE)
    saw(r.stdout, r.stderr)
    assert r.returncode == 0 and r.stdout.strip(), (r.stdout, r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def have_s3_node():
    if os.path.isdir(os.path.join(S3_NODE, "node_modules", "@aws-sdk", "client-s3")):
        return True
    print("skip: %s/node_modules is missing (scripts/install-deps.sh runs npm ci there)" % S3_NODE)
    return False


def test_sdk_js_put_stream_20mib_and_get():
    """The SDK's default checksum on a streamed body: aws-chunked with an
    x-amz-checksum-crc32 trailer, STREAMING-UNSIGNED-PAYLOAD-TRAILER."""
    if not have_s3_node():
        return
    src = os.path.join(E.tmp, "js-20m")
    with open(src, "wb") as f:
        f.write(os.urandom(20 * 1024 * 1024))
    want = hashlib.sha256(open(src, "rb").read()).hexdigest()
    r = s3_node("put-stream", "js-big", src)
    assert r["ok"] and r["status"] == 200, (r, last_row()["why"])
    row = last_row()
    h = dict((k.lower(), v) for k, v in row["headers"])
    assert h["x-amz-content-sha256"] == fake_aws.UNSIGNED_TRAILER, h
    assert h["x-amz-trailer"] == "x-amz-checksum-crc32", h
    assert h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=%s/" % REAL_AKID)
    assert h["x-amz-security-token"] == REAL_TOKEN
    assert row["verified"] and "trailer x-amz-checksum-crc32" in row["why"], row["why"]
    assert row["len"] == 20 * 1024 * 1024 and row["sha256"] == want
    r = s3_node("get", "js-big")
    assert r["ok"] and r["len"] == 20 * 1024 * 1024 and r["sha256"] == want, r


def test_sdk_js_wrong_signature_refused():
    """Signed with a secret that is not the placeholder: sent as signed
    (the real key never touches it) and the upstream refuses it."""
    if not have_s3_node():
        return
    src = os.path.join(E.tmp, "js-small")
    with open(src, "wb") as f:
        f.write(os.urandom(200000))
    r = s3_node("put-stream-badsig", "js-bad", src)
    assert not r["ok"] and r["status"] == 403, r
    row = last_row()
    # The placeholder key id is still there: the proxy did not re-sign it.
    assert not row["verified"] and row["why"] == "unknown key id " + PH_AKID, row["why"]
    h = dict((k.lower(), v) for k, v in row["headers"])
    assert h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=%s/" % PH_AKID)
    assert h["x-amz-content-sha256"] == fake_aws.UNSIGNED_TRAILER


def test_wrong_signed_passes_unchanged():
    """Signed with another secret (placeholder key id) or another key id:
    forwarded exactly as sent; the fake, which knows the real key, refuses."""
    for user in ("%s:not-the-placeholder" % PH_AKID, "AKIAOTHERKEY00000000:whatever"):
        code, body, r = E.curl(PX, "https://%s/bkt/x" % S3, "-v", "--aws-sigv4",
                               "aws:amz:us-east-1:s3", "-u", user,
                               "-H", "x-amz-security-token: " + PH_TOKEN)
        saw(body, r.stderr)
        assert code == 403, (code, body)
        row = last_row()
        assert not row["verified"], row
        sent = [l for l in r.stderr.decode().splitlines() if l.startswith("> Authorization:")]
        got = [v for k, v in row["headers"] if k.lower() == "authorization"]
        assert sent and got == [sent[0].split(": ", 1)[1]], (sent, got)
        assert [v for k, v in row["headers"] if k.lower() == "x-amz-security-token"] == [PH_TOKEN]


def test_no_real_value_reaches_the_client_or_the_state():
    inj = [r for r in E.audit("inject") if (r.get("detail") or {}).get("placement") == "sigv4"]
    assert inj, "no sigv4 inject audit row"
    blob = b"".join(SEEN)
    for v in (REAL_SECRET, REAL_TOKEN, REAL_AKID):
        assert v.encode() not in blob, v
    for path, data in E.all_state_bytes():
        for v in (REAL_SECRET, REAL_TOKEN):
            assert v.encode() not in data, (v, path)


def test_binding_api_and_ls():
    st, _, body = E.d.unix("GET", "/v1/secrets")
    assert st == 200 and REAL_AKID not in body.decode()
    r = E.cli("secret", "ls")
    assert "AWS SigV4 re-signing (region any, service any)" in r.stdout, r.stdout
    assert REAL_AKID not in r.stdout
    # region/service without sigv4; bad names; the placeholder names themselves.
    for path, body in (("/v1/secrets/AWS_PROD/bindings", {"host": "x.amazonaws.com",
                                                          "region": "us-east-1"}),
                       ("/v1/secrets/AWS_PROD/bindings", {"host": "x.amazonaws.com",
                                                          "sigv4": True, "region": "US EAST"}),
                       ("/v1/secrets/AWS_PROD/bindings", {"host": "x.amazonaws.com",
                                                          "sigv4": True, "query": "k"})):
        st, _, out = E.d.unix("POST", path, json.dumps(body).encode(),
                              {"Content-Type": "application/json"})
        assert st == 422, (body, st, out)
    E.secret(PH_AKID, "AKIAX\nsecret\n")
    r = E.cli("secret", "bind-aws", PH_AKID, "--host", "*.amazonaws.com", check=False)
    assert r.returncode != 0 and "placeholder names" in r.stderr, (r.stdout, r.stderr)
    E.cli("secret", "rm", PH_AKID)


def test_stops_clean_no_secret_in_logs():
    """Last: the proxy's own output and the daemon's log hold no real value
    (A5), and the daemon exits 0 without sanitizer reports (ASan builds)."""
    out = []
    for px in E.proxies:
        px.stop()
        out.append(px.proc.stdout.read() + px.proc.stderr.read())
    E.stop_clean()
    logs = "".join(out) + E.d.stderr()
    for v in (REAL_SECRET, REAL_TOKEN):
        assert v not in logs, v


if __name__ == "__main__":
    run_suite(setup, [test_boto3_put_get_unsigned_payload, test_boto3_signed_payload,
                      test_presigned_get, test_awscli_put_get_presign, test_curl_aws_sigv4,
                      test_bedrock_body_hash, test_bedrock_over_cap_413,
                      test_chunked_upload_20mib, test_chunked_bad_chunk_not_resigned,
                      test_signed_trailer_upload, test_unsigned_trailer_upload_by_hand,
                      test_trailer_refusals, test_sdk_js_put_stream_20mib_and_get,
                      test_sdk_js_wrong_signature_refused,
                      test_wrong_signed_passes_unchanged,
                      test_no_real_value_reaches_the_client_or_the_state,
                      test_binding_api_and_ls, test_stops_clean_no_secret_in_logs])
