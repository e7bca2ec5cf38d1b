// The real AWS S3 SDK (@aws-sdk/client-s3) through `nilbox proxy`, for
// tests/integ/test_sigv4.py. It holds only the placeholder credentials;
// nilbox re-signs with the real key (secret bind-aws). node:https through
// a CONNECT-tunnelling agent (HTTP/1.1; the proxy's interception CA).
// usage: node s3.mjs PROXY_URL CA_FILE ENDPOINT SCENARIO KEY [FILE]
// Scenarios: put-stream (PutObject, body a file stream: the SDK's default
// checksum goes as aws-chunked with an x-amz-checksum-crc32 trailer,
// STREAMING-UNSIGNED-PAYLOAD-TRAILER), put-stream-badsig (the same signed
// with a secret that is not the placeholder), get (GetObject; the body's
// length and SHA-256).
// Prints one JSON object: {ok, status, ...} or {ok: false, status, name,
// message, headers, body} for an error (everything the client got back).
import { createReadStream, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { S3Client, PutObjectCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';

const [proxy, caFile, endpoint, scenario, key, file] = process.argv.slice(2);
const pu = new URL(proxy);
const ca = readFileSync(caFile);
const token = pu.username || pu.password
  ? `Basic ${Buffer.from(`${decodeURIComponent(pu.username)}:${decodeURIComponent(pu.password)}`)
    .toString('base64')}`
  : null;

class TunnelAgent extends https.Agent {
  createConnection(o, cb) {
    const req = http.request({ host: pu.hostname, port: pu.port, method: 'CONNECT',
                               path: `${o.host}:${o.port}`,
                               headers: token ? { 'proxy-authorization': token } : {} });
    req.on('connect', (res, socket) => {
      if (res.statusCode !== 200) return cb(new Error(`CONNECT: ${res.statusCode}`));
      cb(null, tls.connect({ socket, servername: o.servername || o.host, ca }));
    });
    req.on('error', cb);
    req.end();
  }
}

const secret = scenario === 'put-stream-badsig' ? 'not-the-placeholder' : 'AWS_SECRET_ACCESS_KEY';
const s3 = new S3Client({
  region: 'us-east-1', endpoint, forcePathStyle: true, maxAttempts: 1,
  credentials: { accessKeyId: 'AWS_ACCESS_KEY_ID', secretAccessKey: secret,
                 sessionToken: 'AWS_SESSION_TOKEN' },
  requestHandler: new NodeHttpHandler({ httpsAgent: new TunnelAgent({ keepAlive: false }) }) });

async function main() {
  if (scenario === 'put-stream' || scenario === 'put-stream-badsig') {
    const r = await s3.send(new PutObjectCommand({ Bucket: 'bkt', Key: key,
                                                   Body: createReadStream(file) }));
    return { ok: true, status: r.$metadata.httpStatusCode, etag: r.ETag };
  }
  if (scenario === 'get') {
    const r = await s3.send(new GetObjectCommand({ Bucket: 'bkt', Key: key }));
    const body = Buffer.from(await r.Body.transformToByteArray());
    return { ok: true, status: r.$metadata.httpStatusCode, len: body.length,
             sha256: createHash('sha256').update(body).digest('hex') };
  }
  throw new Error(`unknown scenario ${scenario}`);
}

main().then((r) => console.log(JSON.stringify(r)), async (e) => {
  const res = e.$response;
  let body = null;
  try {
    body = res?.body ? Buffer.from(await res.body.transformToByteArray?.() ?? []).toString() : null;
  } catch { body = null; }
  console.log(JSON.stringify({ ok: false, status: e.$metadata?.httpStatusCode ?? 0,
                               name: e.name, message: String(e.message),
                               headers: res?.headers ?? null, body }));
});
