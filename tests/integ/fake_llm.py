#!/usr/bin/env python3
"""A fake LLM provider upstream for the usage tests, speaking the wire formats
of the real APIs as their SDKs expect them (fake_upstream.py's HTTP/TLS
server, other routes):

  POST /v1/chat/completions  OpenAI chat: JSON, or SSE ("data: {...}\\n\\n",
                             "data: [DONE]"), the usage chunk (choices: [])
                             only when stream_options.include_usage is true
  POST /v1/messages          Anthropic messages: JSON, or SSE (message_start
                             with input and cache counts, content deltas,
                             message_delta with the output count, message_stop)
  POST /v1beta/models/M:generateContent, :streamGenerateContent?alt=sse
                             Gemini: usageMetadata (cumulative in each chunk)
  POST /model/M/converse, /model/M/converse-stream
                             Bedrock Converse: JSON, or AWS event-stream
                             frames with the usage in the "metadata" event

The counts are made up from the request (input from the body size, output
from max_tokens up to 12) and logged, one JSON line per response, to the
--served file: what the provider "billed", which the test compares with
what nilbox recorded. Header x-fake-delay-ms spaces the stream's events;
x-fake-hold-ms holds the whole answer first.

Usage: fake_llm.py --cert C --key K --log FILE --served FILE; prints "PORT <n>".
"""
import argparse
import asyncio
import json
import os
import struct
import sys
import time
import urllib.parse
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_upstream  # noqa: E402


class Llm(fake_upstream.Upstream):
    def __init__(self, served, *a):
        super().__init__(*a)
        self.served = open(served, "a", buffering=1)
        self.seq = 0

    def bill(self, entry):
        self.served.write(json.dumps(entry) + "\n")

    async def chunked(self, writer, status, ctype, extra=()):
        hdrs = ["HTTP/1.1 %d OK" % status, "Content-Type: " + ctype,
                "Transfer-Encoding: chunked", "Cache-Control: no-cache"]
        hdrs += ["%s: %s" % kv for kv in extra]
        writer.write(("\r\n".join(hdrs) + "\r\n\r\n").encode())
        await writer.drain()

    async def piece(self, writer, data, delay):
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()
        if delay:
            await asyncio.sleep(delay)

    async def route(self, writer, method, target, path, q, hlist, headers, state, keep):
        try:
            req = json.loads(state["prefix"] or b"{}")
        except ValueError:
            await self.send(writer, 400, b'{"error":{"message":"bad json"}}', keep=keep)
            return True
        self.seq += 1
        delay = int(headers.get("x-fake-delay-ms", "0")) / 1000.0
        # Holds the answer, so that requests sent together are in flight
        # together however slowly a loaded machine admits them.
        hold = int(headers.get("x-fake-hold-ms", "0")) / 1000.0
        if hold:
            await asyncio.sleep(hold)
        n_in = 7 + state["len"] // 13
        n_out = min(int(req.get("max_tokens") or req.get("max_completion_tokens") or 12), 12)
        stream = bool(req.get("stream"))
        if path == "/v1/chat/completions":
            cached = 2 if n_in > 20 else 0
            asked = bool((req.get("stream_options") or {}).get("include_usage"))
            usage = {"prompt_tokens": n_in, "completion_tokens": n_out,
                     "total_tokens": n_in + n_out,
                     "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0}}
            model = req.get("model", "gpt-4o-mini") + "-2024-07-18"
            rid = "req_%d" % self.seq
            self.bill({"api": "openai", "stream": stream, "include_usage": asked,
                       "input": n_in, "output": n_out, "cached": cached, "request_id": rid})
            cid = "chatcmpl-%d" % self.seq
            if not stream:
                body = {"id": cid, "object": "chat.completion", "created": int(time.time()),
                        "model": model, "choices": [{"index": 0, "message": {
                            "role": "assistant", "content": "tok " * n_out, "refusal": None},
                            "logprobs": None, "finish_reason": "stop"}],
                        "usage": usage, "service_tier": "default",
                        "system_fingerprint": "fp_1"}
                await self.send(writer, 200, json.dumps(body).encode(),
                                extra=[("x-request-id", rid)], keep=keep)
                return True
            await self.chunked(writer, 200, "text/event-stream; charset=utf-8",
                               [("x-request-id", rid)])

            def chunk(delta, finish=None, choices=True):
                c = {"id": cid, "object": "chat.completion.chunk", "created": 1,
                     "model": model, "system_fingerprint": "fp_1",
                     "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": finish}] if choices else []}
                if asked:
                    c["usage"] = None
                return b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n"
            await self.piece(writer, chunk({"role": "assistant", "content": ""}), delay)
            for _ in range(n_out):
                await self.piece(writer, chunk({"content": "tok "}), delay)
            await self.piece(writer, chunk({}, "stop"), delay)
            if asked:
                c = {"id": cid, "object": "chat.completion.chunk", "created": 1, "model": model,
                     "system_fingerprint": "fp_1", "choices": [], "usage": usage}
                await self.piece(writer, b"data: " + json.dumps(c, separators=(",", ":")).encode()
                                 + b"\n\n", 0)
            await self.piece(writer, b"data: [DONE]\n\n", 0)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if path == "/v1/messages":
            cr, cw = 4, 3
            model = req.get("model", "claude-3-5-haiku-20241022")
            rid = "req_a%d" % self.seq
            self.bill({"api": "anthropic", "stream": stream, "input": n_in, "output": n_out,
                       "cached": cr, "cache_write": cw, "request_id": rid})
            mid = "msg_%d" % self.seq
            if not stream:
                body = {"id": mid, "type": "message", "role": "assistant", "model": model,
                        "content": [{"type": "text", "text": "tok " * n_out}],
                        "stop_reason": "end_turn", "stop_sequence": None,
                        "usage": {"input_tokens": n_in, "cache_creation_input_tokens": cw,
                                  "cache_read_input_tokens": cr, "output_tokens": n_out}}
                await self.send(writer, 200, json.dumps(body).encode(),
                                extra=[("request-id", rid)], keep=keep)
                return True
            await self.chunked(writer, 200, "text/event-stream; charset=utf-8",
                               [("request-id", rid)])

            def ev(name, data):
                return ("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode()
            await self.piece(writer, ev("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": n_in, "cache_creation_input_tokens": cw,
                          "cache_read_input_tokens": cr, "output_tokens": 1}}}), delay)
            await self.piece(writer, ev("content_block_start", {
                "type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}), delay)
            await self.piece(writer, ev("ping", {"type": "ping"}), delay)
            for _ in range(n_out):
                await self.piece(writer, ev("content_block_delta", {
                    "type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": "tok "}}), delay)
            await self.piece(writer, ev("content_block_stop", {"type": "content_block_stop",
                                                              "index": 0}), delay)
            await self.piece(writer, ev("message_delta", {
                "type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                   "stop_sequence": None},
                "usage": {"output_tokens": n_out}}), delay)
            await self.piece(writer, ev("message_stop", {"type": "message_stop"}), 0)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if path.startswith("/v1beta/models/") and ":" in path:
            return await self.gemini(writer, path, req, state, delay, keep)
        if path.startswith("/model/") and path.endswith(("/converse", "/converse-stream")):
            return await self.bedrock(writer, path, req, state, delay, keep)
        await self.send(writer, 404, b'{"error":{"message":"no such route"}}', keep=keep)
        return True

    async def gemini(self, writer, path, req, state, delay, keep):
        """generateContent (JSON) and streamGenerateContent?alt=sse (SSE, the
        usageMetadata cumulative in every chunk, complete in the last)."""
        model, _, verb = path[len("/v1beta/models/"):].partition(":")
        n_in = 7 + state["len"] // 13
        n_out = min(int((req.get("generationConfig") or {}).get("maxOutputTokens") or 12), 12)
        cached = 2 if n_in > 20 else 0
        rid = "gem_%d" % self.seq
        version = model + "-001"
        stream = verb == "streamGenerateContent"
        self.bill({"api": "gemini", "stream": stream, "input": n_in, "output": n_out,
                   "cached": cached, "model": version, "request_id": rid})

        def part(text, out, last):
            c = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            if last:
                c["finishReason"] = "STOP"
            um = {"promptTokenCount": n_in, "candidatesTokenCount": out,
                  "totalTokenCount": n_in + out,
                  "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n_in}]}
            if cached:
                um["cachedContentTokenCount"] = cached
            return {"candidates": [c], "usageMetadata": um, "modelVersion": version,
                    "responseId": rid}
        if not stream:
            await self.send(writer, 200, json.dumps(part("tok " * n_out, n_out, True)).encode(),
                            keep=keep)
            return True
        await self.chunked(writer, 200, "text/event-stream")
        for i in range(n_out):
            await self.piece(writer, b"data: " + json.dumps(part("tok ", i + 1, i == n_out - 1))
                             .encode() + b"\r\n\r\n", delay)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def bedrock(self, writer, path, req, state, delay, keep):
        """Converse (JSON) and ConverseStream (AWS event-stream frames, the
        usage in the last one, "metadata")."""
        model = urllib.parse.unquote(path.split("/")[2])
        n_in = 7 + state["len"] // 13
        n_out = min(int((req.get("inferenceConfig") or {}).get("maxTokens") or 12), 12)
        cr, cw = 3, 1
        rid = "bdr-%d" % self.seq
        stream = path.endswith("/converse-stream")
        self.bill({"api": "bedrock", "stream": stream, "input": n_in, "output": n_out,
                   "cached": cr, "cache_write": cw, "model": model, "request_id": rid})
        usage = {"inputTokens": n_in, "outputTokens": n_out, "totalTokens": n_in + n_out,
                 "cacheReadInputTokens": cr, "cacheWriteInputTokens": cw}
        if not stream:
            body = {"output": {"message": {"role": "assistant",
                                           "content": [{"text": "tok " * n_out}]}},
                    "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 5}}
            await self.send(writer, 200, json.dumps(body).encode(),
                            extra=[("x-amzn-RequestId", rid)], keep=keep)
            return True
        await self.chunked(writer, 200, "application/vnd.amazon.eventstream",
                           [("x-amzn-RequestId", rid)])
        await self.piece(writer, es_frame("messageStart", {"role": "assistant"}), delay)
        for _ in range(n_out):
            await self.piece(writer, es_frame("contentBlockDelta", {
                "contentBlockIndex": 0, "delta": {"text": "tok "}}), delay)
        await self.piece(writer, es_frame("contentBlockStop", {"contentBlockIndex": 0}), delay)
        await self.piece(writer, es_frame("messageStop", {"stopReason": "end_turn"}), delay)
        await self.piece(writer, es_frame("metadata", {"usage": usage,
                                                       "metrics": {"latencyMs": 5}}), 0)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def es_frame(event, payload):
    """One AWS event-stream message: prelude (total and headers length, CRC32),
    string headers, the JSON payload, CRC32 of it all."""
    hdrs = b""
    for k, v in ((":event-type", event), (":content-type", "application/json"),
                 (":message-type", "event")):
        hdrs += bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode()
    data = json.dumps(payload).encode()
    prelude = struct.pack(">II", 12 + len(hdrs) + len(data) + 4, len(hdrs))
    msg = prelude + struct.pack(">I", zlib.crc32(prelude)) + hdrs + data
    return msg + struct.pack(">I", zlib.crc32(msg))


def spawn(log, served, cert, key):
    import subprocess
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--log", log, "--served",
                          served, "--cert", cert, "--key", key],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    assert line.startswith("PORT "), line
    return p, int(line.split()[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--log")
    ap.add_argument("--served")
    a = ap.parse_args()
    up = Llm(a.served, a.log, a.cert, a.key)

    async def run():
        port = await up.start()
        print("PORT %d" % port, flush=True)
        async with up.server:
            await up.server.serve_forever()
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
