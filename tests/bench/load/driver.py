"""Attestations against a running server plugin process, many at once, as spire-server
sends them: one gRPC connection (the plugin's socket), one `Attest` stream each.

Each job is a node and what its agent does with the challenge (`Act`); its outcome is
the status the stream ended with, which the job says in advance (`expected`), so a run
counts what went otherwise. The plugin process is read from /proc: resident memory, its
peak, threads, open file descriptors, CPU (utime + stime, threads that have exited
included).
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from spire_tpm_attestor import wire
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2 as server_pb2
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2_grpc as server_pb2_grpc
from tests.bench.load.fleet import Node
from tests.bench.measure import percentile, proc_status_bytes

OK = grpc.StatusCode.OK
GARBAGE = b"\xff" * 40  # not a protobuf message: refused at decoding


class Act(enum.Enum):
    ANSWER = "answer"  # the right secret
    WRONG_SECRET = "wrong_secret"  # a secret of the right size, not the one encrypted
    GARBAGE = "garbage"  # sends bytes that are no payload
    CANCEL = "cancel"  # cancels once challenged (SPIRE giving up, an agent gone)
    SILENT = "silent"  # takes the challenge and never answers (until challenge_timeout)


@dataclass(frozen=True)
class Job:
    node: Node
    act: Act
    expected: grpc.StatusCode  # OK: admitted, with the node's EK hash in its SPIFFE ID
    kind: str  # how the run reports it: "new chain node", "re-attestation", ...


@dataclass(frozen=True)
class Outcome:
    job: Job
    code: grpc.StatusCode
    details: str
    seconds: float

    @property
    def as_expected(self) -> bool:
        return self.code is self.job.expected

    def describe(self) -> str:
        expected, got = self.job.expected.name, self.code.name
        return f"{self.job.kind}: expected {expected}, got {got} {self.details}"


class Gate:
    """Holds every stream once challenged until all `count` are (or have ended): then
    the server has them all in progress at the same time."""

    def __init__(self, count: int) -> None:
        self._waiting = count
        self._open = asyncio.Event()

    def arrive(self) -> None:
        self._waiting -= 1
        if self._waiting == 0:
            self._open.set()

    async def pass_through(self) -> None:
        self.arrive()
        await self._open.wait()


async def attest(
    stub: server_pb2_grpc.NodeAttestorStub, job: Job, timeout: float, gate: Gate | None = None
) -> Outcome:
    """One Attest stream, driven as `job.act` says; with a `gate`, answered only once
    the gate opens."""
    started = time.perf_counter()
    call = stub.Attest(timeout=timeout)
    code, details = OK, ""
    waiting = gate
    try:
        payload = GARBAGE if job.act is Act.GARBAGE else job.node.payload
        await call.write(server_pb2.AttestRequest(payload=payload))
        challenge = (await call.read()).challenge  # a refusal raises
        if waiting is not None:
            arrived, waiting = waiting, None
            await arrived.pass_through()
        if job.act is Act.CANCEL:
            call.cancel()
            code = grpc.StatusCode.CANCELLED
        elif job.act is Act.SILENT:
            await call.read()  # the server ends it with DEADLINE_EXCEEDED
        else:
            answer = (
                job.node.answer(challenge)
                if job.act is Act.ANSWER
                else attestation_pb2.ChallengeResponse(
                    version=wire.PROTOCOL_VERSION, secret=os.urandom(wire.SECRET_SIZE)
                ).SerializeToString()
            )
            await call.write(server_pb2.AttestRequest(challenge_response=answer))
            spiffe_id = (await call.read()).agent_attributes.spiffe_id
            await call.done_writing()
            code = await call.code()
            if code == OK and not spiffe_id.endswith(job.node.pub_hash):
                code, details = grpc.StatusCode.UNKNOWN, f"admitted as {spiffe_id!r}"
    except grpc.aio.AioRpcError:
        # The stream's own status: a write that races the server's refusal fails with
        # "Internal error from Core" on the client side.
        code, details = await call.code(), await call.details()
    finally:
        if waiting is not None:  # ended before its challenge: the others need not wait
            waiting.arrive()
    return Outcome(job, code, details, time.perf_counter() - started)


async def run(
    address: str,
    jobs: Iterable[Job],
    concurrency: int,
    timeout: float = 60.0,
    on_done: Callable[[list[Outcome]], None] | None = None,
    gate: Gate | None = None,
) -> list[Outcome]:
    """`jobs` through one connection, `concurrency` streams at a time (silent ones do
    not count: they wait on the server's clock); `on_done` after each outcome; `gate`
    for each stream, see `attest`."""
    outcomes: list[Outcome] = []
    silent: list[asyncio.Task[Outcome]] = []
    pending: Iterator[Job] = iter(jobs)

    async with grpc.aio.insecure_channel(f"unix:{address}") as channel:
        stub = server_pb2_grpc.NodeAttestorStub(channel)

        def record(outcome: Outcome) -> None:
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcomes)

        async def worker() -> None:
            for job in pending:  # one iterator shared by every worker
                if job.act is Act.SILENT:
                    task = asyncio.create_task(attest(stub, job, timeout))
                    task.add_done_callback(lambda done: record(done.result()))
                    silent.append(task)
                    await asyncio.sleep(0)
                    continue
                record(await attest(stub, job, timeout, gate))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await asyncio.gather(*silent)
    return outcomes


@dataclass(frozen=True)
class ProcessSample:
    rss: int  # bytes resident
    peak_rss: int  # VmHWM: the most resident since the process started
    threads: int
    fds: int
    cpu_seconds: float

    @classmethod
    def of(cls, pid: int) -> ProcessSample:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Fields after the command name's ")": utime and stime are the 12th and 13th.
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return cls(
            rss=proc_status_bytes(pid, "VmRSS"),
            peak_rss=proc_status_bytes(pid, "VmHWM"),
            threads=len(os.listdir(f"/proc/{pid}/task")),
            fds=len(os.listdir(f"/proc/{pid}/fd")),
            cpu_seconds=(int(fields[11]) + int(fields[12])) / ticks,
        )


def latency_figures(outcomes: Iterable[Outcome]) -> dict[str, float]:
    """p50 and p99 of the admitted ones, in milliseconds."""
    seconds = [outcome.seconds for outcome in outcomes if outcome.code == OK]
    if not seconds:
        return {}
    return {
        "latency_p50_ms": round(percentile(seconds, 50) * 1e3, 2),
        "latency_p99_ms": round(percentile(seconds, 99) * 1e3, 2),
    }


def unexpected(outcomes: Iterable[Outcome]) -> list[str]:
    return [outcome.describe() for outcome in outcomes if not outcome.as_expected]
