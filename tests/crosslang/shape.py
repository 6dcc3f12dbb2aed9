"""The cross-language program shape, written with the Python SDK.

Usage: SIDETRACE_ENDPOINT=unix:///path/agent.sock python3 shape.py TRACE_ID
Emits one trace with the given id; exits 0 once every message was handed to
the agent's socket, 1 if some were dropped, 2 on bad usage. The same shape is
written in shape.js (Node.js) and sdk/cpp/examples/shape.cpp (C++): keep the
three identical.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "sdk", "python"))

from sidetrace import Client, Metadata, User  # noqa: E402


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} TRACE_ID (endpoint: $SIDETRACE_ENDPOINT)", file=sys.stderr)
        return 2
    client = Client()
    trace = client.trace(
        trace_id=argv[1],
        conversation_id="conv_123",
        session_id="session_123",
        metadata=Metadata(environment="production"),
        user=User(id="user_123", plan="pro"),
    )
    with trace.message("User: Tell me about neural networks") as message:
        # A tool call that already happened, sent whole (35 ms long).
        message.send("TOOL", "lookup(42)", output={"found": True}, latency=35, name="lookup")

        retrieval = message.retrieval("Searching documentation")
        retrieval.end("Found 2 relevant articles")

        with message.tool({"query": "neural networks"}, name="search_docs") as tool:
            tool.end({"hits": 2})

        gen = message.generation(
            [{"role": "user", "content": "Tell me about neural networks"}],
            name="Creating explanation",
            attrs={"model": "gpt-4o-mini", "temperature": 0.2},
        )
        gen.end(
            "Neural networks are layered function approximators.",
            attrs={"input_tokens": 812, "output_tokens": 95},
        )

        fetch = message.tool("https://example.invalid/nn", name="fetch")
        fetch.end(error="timeout")

        message.end("Bot: Neural networks are...")
    trace.system("Initializing cache").end("Cache warmed up")

    trace.feedback(feedback_tag="THUMBS_UP", feedback_text="helpful", score=1)
    gen.feedback(feedback_tag="WRONG_SOURCE", score=0)

    return 0 if client.close(5.0) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
