"""supabase-js in node, as the project's users run it: installed from tests/js's lockfile, driven line by line."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["JS_DIRECTORY", "NodeProcess", "node_clients_fixture"]

JS_DIRECTORY = Path(__file__).parent / "js"
_STAMP = "node_modules/.gridloop-lock-sha256"


def _install() -> None:
    """``npm ci`` once per lockfile: a fresh clone (CI) installs, later runs reuse node_modules."""
    lock = (JS_DIRECTORY / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock).hexdigest()
    stamp = JS_DIRECTORY / _STAMP
    if stamp.exists() and stamp.read_text() == digest:
        return
    npm = shutil.which("npm")
    assert npm is not None, "npm is needed for the supabase-js tests"
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS_DIRECTORY, check=True, timeout=300
    )
    stamp.write_text(digest)


def _node_command() -> list[str]:
    node = shutil.which("node")
    assert node is not None, "node is needed for the supabase-js tests"
    major = int(
        subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout[1:].split(".")[0]
    )
    # Node 22 has a global WebSocket; 20 has it behind a flag, and supabase-js needs it to be global.
    return [node] if major >= 22 else [node, "--experimental-websocket"]


class NodeProcess:
    """A node script's stdout, a line at a time; its stdin takes JSON lines, and closing it ends the script."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.lines: list[str] = []

    async def line(self, *, timeout_s: float = 15.0) -> str:
        assert self._process.stdout is not None
        raw = await asyncio.wait_for(self._process.stdout.readline(), timeout_s)
        if not raw:
            stderr = await self._process.stderr.read() if self._process.stderr is not None else b""
            raise AssertionError(f"node exited: {stderr.decode(errors='replace')[-2000:]}")
        text = raw.decode().rstrip("\n")
        self.lines.append(text)
        return text

    async def json_line(self, *, timeout_s: float = 15.0) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(await self.line(timeout_s=timeout_s))
        return parsed

    async def send(self, message: object) -> None:
        """One JSON line to the script's stdin."""
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(message).encode() + b"\n")
        await self._process.stdin.drain()

    async def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 5)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()


NodeClients = Callable[..., AbstractAsyncContextManager[NodeProcess]]


@pytest.fixture(name="node_clients", scope="session")
def node_clients_fixture() -> NodeClients:
    """Runs a script of tests/js with GRIDLOOP_URL and GRIDLOOP_ANON_KEY set: ``async with node_clients(...)``."""
    _install()
    command = _node_command()

    @contextlib.asynccontextmanager
    async def run(script: str, *arguments: str, url: str, anon_key: str) -> AsyncIterator[NodeProcess]:
        environment = {**os.environ, "GRIDLOOP_URL": url, "GRIDLOOP_ANON_KEY": anon_key}
        process = await asyncio.create_subprocess_exec(
            *command,
            str(JS_DIRECTORY / script),
            *arguments,
            cwd=JS_DIRECTORY,
            env=environment,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        node = NodeProcess(process)
        try:
            yield node
        finally:
            await node.close()

    return run
