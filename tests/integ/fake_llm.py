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

The counts are made up from the request (input from the body size, output
from max_tokens up to 12) and logged, one JSON line per response, to the
--served file: what the provider "billed", which the test compares with
what nilbox recorded. Header x-fake-delay-ms spaces the stream's events.

Usage: fake_llm.py --cert C --key K --log FILE --served FILE; prints "PORT <n>".
"""
import argparse
import asyncio
import json
import os
import sys
import time

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
        await self.send(writer, 404, b'{"error":{"message":"no such route"}}', keep=keep)
        return True


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
