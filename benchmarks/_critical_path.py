"""The critical path of a finished Snakemake run, read from its console log.

Snakemake's log names each job's rule, wildcards, input and output files, and the second it started
and finished. A job depends on the jobs that wrote its inputs (directory outputs cover the files below
them). Walking back from the last job to finish, always to the dependency that finished last, gives
the chain of jobs that set the wall time; the gap before a job starts, after its last dependency
finished, is time it waited for a free core.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_HEAD = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
_DONE = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")


@dataclass
class Job:
    jobid: int
    rule: str
    start: datetime
    wildcards: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    end: datetime | None = None

    @property
    def name(self) -> str:
        return f"{self.rule}[{self.wildcards}]" if self.wildcards else self.rule

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def _files(value: str) -> list[str]:
    return [f.strip() for f in value.split(", ") if f.strip()]


def parse_log(text: str) -> dict[int, Job]:
    """jobid -> Job (rule, wildcards, files, start and end) for every job the log shows finished."""
    jobs: dict[int, Job] = {}
    stamp = pending = None
    for raw in text.splitlines():
        line = raw.strip()
        if m := _STAMP.match(line):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := _HEAD.match(line):
            pending = {"rule": m.group(1), "start": stamp}
        elif pending is not None and raw.startswith("    ") and ": " in line:
            key, value = line.split(": ", 1)
            pending[key] = value
            if "jobid" in pending:  # (re)made on each key: wildcards are printed after the jobid
                jid = int(pending["jobid"])
                jobs[jid] = Job(jid, pending["rule"], pending["start"], pending.get("wildcards", ""),
                                _files(pending.get("input", "")), _files(pending.get("output", "")))
        elif m := _DONE.match(line):
            pending = None
            if int(m.group(1)) in jobs:
                jobs[int(m.group(1))].end = stamp
    return {k: j for k, j in jobs.items() if j.end is not None}


def dependencies(jobs: dict[int, Job]) -> dict[int, list[int]]:
    """jobid -> the jobs whose outputs (files, or directories above them) are among its inputs."""
    writer = {out.rstrip("/"): j.jobid for j in jobs.values() for out in j.outputs}
    deps: dict[int, list[int]] = {}
    for j in jobs.values():
        found = set()
        for path in j.inputs:
            p = path.rstrip("/")
            while p:
                if p in writer and writer[p] != j.jobid:
                    found.add(writer[p])
                    break
                p = p.rpartition("/")[0]
        deps[j.jobid] = sorted(found)
    return deps


def critical_path(jobs: dict[int, Job]) -> list[tuple[Job, float]]:
    """The chain of jobs that set the wall time, first to last, each with the seconds it waited for a
    core after its last dependency finished (or after the run's first job started)."""
    if not jobs:
        return []
    deps = dependencies(jobs)
    t0 = min(j.start for j in jobs.values())
    job = max(jobs.values(), key=lambda j: (j.end, j.start))
    chain = []
    while job is not None:
        before = [jobs[d] for d in deps[job.jobid]]
        prev = max(before, key=lambda j: j.end) if before else None
        ready = prev.end if prev else t0
        chain.append((job, max(0.0, (job.start - ready).total_seconds())))
        job = prev
    return chain[::-1]


def report(jobs: dict[int, Job]) -> str:
    """The critical path as a table: each job's seconds, its wait for a core, and its share of the wall."""
    chain = critical_path(jobs)
    if not chain:
        return "critical path: no finished job in the log"
    wall = (max(j.end for j in jobs.values()) - min(j.start for j in jobs.values())).total_seconds()
    lines = [f"critical path ({len(chain)} of {len(jobs)} jobs; wall {wall:.0f} s from the first job's start "
             f"to the last job's end; 1 s resolution):",
             f"  {'job':<58} {'wait s':>7} {'run s':>7} {'share':>6}"]
    for job, wait in chain:
        lines.append(f"  {job.name[:58]:<58} {wait:>7.0f} {job.seconds:>7.0f} {job.seconds / max(wall, 1):>6.0%}")
    busy = sum(j.seconds for j, _ in chain)
    waits = sum(w for _, w in chain)
    lines.append(f"  on the path: {busy:.0f} s running, {waits:.0f} s waiting for a core")
    by_rule: dict[str, float] = {}
    for j in jobs.values():
        by_rule[j.rule] = by_rule.get(j.rule, 0.0) + j.seconds
    top = sorted(by_rule.items(), key=lambda kv: -kv[1])[:8]
    lines.append("  job-seconds by rule (all jobs): " + ", ".join(f"{r} {s:.0f}" for r, s in top))
    return "\n".join(lines)
