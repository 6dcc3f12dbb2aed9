"""The admin endpoint's background operations against the real binary: `sidetrace deadletter
replay` brings back what an upstream refused once it takes it again, and `sidetrace reload`
applies a good file and refuses a bad one, each through an operation that the agent starts at
once and the command follows (docs/operations.md, "Background operations")."""

import json
import subprocess

import harness
from harness import Emitter, wait_until


def cli(agent, *args, timeout=60.0):
    return subprocess.run([str(agent.bin), *args, "--config", str(agent.config_path)],
                          capture_output=True, text=True, timeout=timeout)


def test_deadletter_replay_and_reload_through_the_cli(make_agent, upstream, emitters):
    # Every request is too large and cannot be split below one trace: dead letters.
    upstream.limit_413 = 10
    upstream.set_mode("413")
    agent = make_agent({
        "trace": {"quiet_period_ms": 100},
        "upstream": {"endpoint": upstream.url, "flush_interval_ms": 50,
                     "retry_initial_ms": 50, "retry_max_ms": 200},
    })
    e = Emitter(agent, name="dl", transport="stream", rate=500, limit=60).start()
    emitters.append(e)
    wait_until(lambda: e.count == 60, 20, "all sent")
    wait_until(lambda: agent.metric("sidetrace_deadlettered_total") >= 20, 30,
               "every trace dead-lettered")
    wait_until(lambda: "20 dead-lettered batch(es)" in cli(agent, "deadletter", "list").stdout,
               20, "the dead letters listed")
    assert upstream.distinct_events() == 0

    upstream.set_mode("ok")
    r = cli(agent, "deadletter", "replay")
    assert r.returncode == 0, r.stderr
    assert "replayed 20 dead-lettered batch(es)" in r.stdout, r.stdout
    sent = set(e.sent_ids())
    upstream.wait_for(lambda u: not harness.missing(sent, u), 30, "the replayed traces delivered")
    status, text = agent.http_get("/operations")
    ops = json.loads(text)["operations"]
    assert ops[0]["kind"] == "deadletter_replay" and ops[0]["state"] == "ok", ops
    assert ops[0]["done"] == ops[0]["total"] == 20, ops

    # A good file is applied; a bad one is refused, with the reason, and exits non-zero.
    agent.set_config({"log": {"level": "debug"}})
    r = cli(agent, "reload")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("reloaded"), r.stdout
    agent.set_config({"log": {"level": "loud"}})
    # (The command itself would refuse to read that file: it is given the address instead.)
    r = subprocess.run([str(agent.bin), "reload", "--admin",
                        f"{agent.admin_addr[0]}:{agent.admin_addr[1]}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "log.level" in r.stderr, r.stderr
    assert agent.healthy()
    agent.set_config({"log": {"level": "info"}})
    assert agent.stop() == 0
