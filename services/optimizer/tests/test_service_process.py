"""The optimizer as a process: it starts on the real broker and database and answers optimizer.status."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import asyncpg

from gridloop_common.messaging import RpcClient, open_broker
from gridloop_common.settings import AmqpSettings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_the_optimizer_process_answers_status_over_rpc(
    amqp_url: str, optimizer_database_url: str, pool: asyncpg.Pool
) -> None:
    # ``pool`` empties the tables first: no MPC of an earlier test is there to resume.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GRIDLOOP_")}
    environment.update(
        {
            "GRIDLOOP_AMQP_URL": amqp_url,
            "GRIDLOOP_DATABASE_URL": optimizer_database_url,
            "GRIDLOOP_OPTIMIZER_PORT": str(_free_port()),
            "GRIDLOOP_STARTUP_TIMEOUT_S": "20",
        }
    )
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("gridloop-optimizer")),
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with (
            open_broker(AmqpSettings(amqp_url=amqp_url), client_name="test-status", url=amqp_url) as broker,
            RpcClient.open(channel=broker.channel, publisher=broker.publisher, client_name="test-status") as client,
        ):
            # The request waits in optimizer.rpc (declared by this broker's topology) until the process consumes.
            reply = json.loads(await client.call("optimizer.status", b"{}", timeout_s=40.0))
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = await process.communicate()
    assert reply == {"service": "optimizer", "status": "ready", "mpc_sessions": 0}
    assert process.returncode == 0, errors.decode()
    assert b"Traceback" not in errors
