"""A scripted OpenAI-compatible HTTP server on loopback for the openai brain's
tests: the real ``openai`` client talks HTTP to it.

Each request takes the next scripted reply (a status, a JSON body, headers
and an optional delay); it records every request body and how many were in
flight at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def completion(
    content: str | None = None,
    *,
    tool_arguments: str | None = None,
    refusal: str | None = None,
    finish_reason: str = "stop",
    prompt_tokens: int = 100,
    completion_tokens: int = 50,
) -> Reply:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_arguments is not None:
        message["tool_calls"] = [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "record_answer", "arguments": tool_arguments},
            }
        ]
        finish_reason = "tool_calls"
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1_795_000_000,
            "model": "test-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def error(status: int, message: str = "error", **headers: str) -> Reply:
    return Reply(
        status=status,
        body={"error": {"message": message, "type": "server_error", "code": None}},
        headers=headers,
    )


@dataclass
class ScriptedOpenAI:
    script: list[Reply] = field(default_factory=list)
    default: Reply | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    route: Callable[[dict[str, Any]], Reply] | None = None
    """Answers each request from its body (before the script is used)."""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.paths.append(request.path)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.route is not None:
                reply: Reply | None = self.route(body)
            else:
                reply = self.script.pop(0) if self.script else self.default
            if reply is None:
                return web.json_response({"error": {"message": "nothing scripted"}}, status=500)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            return web.Response(
                status=reply.status,
                text=json.dumps(reply.body),
                content_type="application/json",
                headers=reply.headers,
            )
        finally:
            self.in_flight -= 1


@asynccontextmanager
async def openai_server(server: ScriptedOpenAI) -> AsyncIterator[str]:
    """Serve *server* on 127.0.0.1; yields the base URL (``.../v1``)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    port = sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()
