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
    with open(FAKE_LOG) as f:
        return [json.loads(l) for l in f if l.strip()]


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

def chunked_put(host, path, data, secret=PH_SECRET, chunk=65536, corrupt_at=None):
    amzdate = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    scope = "%s/us-east-1/s3/aws4_request" % amzdate[:8]
    nchunks = (len(data) + chunk - 1) // chunk
    enc_len = sum(len("%x" % min(chunk, len(data) - i * chunk)) + 17 + 64 + 2 +
                  min(chunk, len(data) - i * chunk) + 2 for i in range(nchunks))
    enc_len += 1 + 17 + 64 + 4
    headers = [("Host", host), ("x-amz-date", amzdate),
               ("x-amz-content-sha256", fake_aws.STREAMING), ("Content-Encoding", "aws-chunked"),
               ("x-amz-decoded-content-length", str(len(data))),
               ("Content-Length", str(enc_len)), ("x-amz-security-token", PH_TOKEN)]
    signed = "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;" \
             "x-amz-decoded-content-length;x-amz-security-token"
    seed, key = fake_aws.signature(secret, "PUT", path, headers, signed, fake_aws.STREAMING,
                                   amzdate, scope, False)
    auth = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        PH_AKID, scope, signed, seed)
    s = E.tunnel(host, px=PX)
    head = "PUT %s HTTP/1.1\r\n" % path + "".join("%s: %s\r\n" % h for h in headers) + \
        "Authorization: %s\r\n\r\n" % auth
    s.sendall(head.encode())
    prev = seed
    for i in range(nchunks + 1):
        piece = data[i * chunk:(i + 1) * chunk]
        sig = fake_aws.chunk_sig(key, amzdate, scope, prev, piece)
        prev = sig
        if corrupt_at == i:
            sig = "0" * 64
        s.sendall(b"%x;chunk-signature=%s\r\n" % (len(piece), sig.encode()) + piece + b"\r\n")
    s.settimeout(60)
    resp = http.client.HTTPResponse(s)
    resp.begin()
    body = resp.read()
    saw(body, json.dumps(resp.getheaders()))
    s.close()
    return resp.status, body


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


if __name__ == "__main__":
    run_suite(setup, [test_boto3_put_get_unsigned_payload, test_boto3_signed_payload,
                      test_presigned_get, test_awscli_put_get_presign, test_curl_aws_sigv4,
                      test_bedrock_body_hash, test_bedrock_over_cap_413,
                      test_chunked_upload_20mib, test_chunked_bad_chunk_not_resigned,
                      test_wrong_signed_passes_unchanged,
                      test_no_real_value_reaches_the_client_or_the_state,
                      test_binding_api_and_ls])
