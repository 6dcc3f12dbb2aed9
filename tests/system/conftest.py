"""pytest wiring for the system suite: fixtures, agent log tails on failure, the final table."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import record  # noqa: E402  (re-exported: `from conftest import record`)

__all__ = ["record"]


def pytest_configure(config):
    config.addinivalue_line("markers", "soak_only: runs only with SIDETRACE_SOAK=1")


def pytest_collection_modifyitems(config, items):
    if harness.SOAK:
        return
    skip = pytest.mark.skip(reason="long form only (SIDETRACE_SOAK=1)")
    for item in items:
        if "soak_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _binary_present():
    b = harness.agent_bin()
    if not b.exists():
        pytest.exit(f"agent binary not found: {b} (build it or set SIDETRACE_BIN)", returncode=2)


@pytest.fixture
def workdir(tmp_path) -> pathlib.Path:
    return tmp_path


@pytest.fixture
def upstream():
    up = harness.Upstream()
    yield up
    up.close()


@pytest.fixture
def make_agent(tmp_path):
    """make_agent(config=None, name="agent", **kw) -> a started, ready Agent; all are
    killed and cleaned up at teardown."""
    made = []

    def make(config=None, name="agent", start=True, **kw):
        a = harness.Agent(tmp_path / name, config, **kw)
        made.append(a)
        if start:
            a.start()
            a.wait_ready()
        return a

    yield make
    for a in made:
        a.cleanup()
        if a in harness.LIVE_AGENTS:
            harness.LIVE_AGENTS.remove(a)


@pytest.fixture
def emitters():
    """A list to append Emitters to; all are stopped at teardown."""
    out = []
    yield out
    for e in out:
        try:
            e.stop()
        except AssertionError:
            pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        tails = [a.log_tail(80) for a in harness.LIVE_AGENTS if a.log_path.exists()]
        if tails:
            rep.sections.append(("agent logs", "\n\n".join(tails)))


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = harness.RESULTS
    if not rows:
        return
    cols = [("check", "check"), ("load", "load held (events/s)"), ("faults", "faults survived"),
            ("bad_inputs", "bad inputs tried"), ("lost", "events lost")]
    table = [[h for _, h in cols]]
    for r in rows:
        table.append([f"{r['section']}: {r['check']}"] + [_fmt(r.get(k)) for k, _ in cols[1:]])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    tr = terminalreporter
    tr.section("sidetrace reliability summary" + (" (soak)" if harness.SOAK else " (short)"))
    for i, row in enumerate(table):
        tr.write_line("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                                for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            tr.write_line("  ".join("-" * w for w in widths))
    total_lost = sum(r.get("lost") or 0 for r in rows)
    tr.write_line(f"total events lost: {total_lost}")
    extras = [r for r in rows if set(r) - {"section", "check", "load", "faults", "bad_inputs", "lost"}]
    for r in extras:
        detail = {k: v for k, v in r.items()
                  if k not in ("section", "check", "load", "faults", "bad_inputs", "lost")}
        tr.write_line(f"  {r['section']}: {r['check']}: {json.dumps(detail, default=str)}")
    path = os.environ.get("SIDETRACE_SYSTEM_REPORT")
    if path:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(r, default=str) + "\n")
