"""Every example on the tracing SDK page runs unchanged (only the client's
construction differs), and sends what it says."""

from __future__ import annotations

import textwrap

from sidetrace import Metadata, User

# The page's examples, verbatim and in the page's order.
PAGE_EXAMPLES = [
    '''
# Initialize a trace
trace = client.trace(
    conversation_id="conv_123",
    session_id="session_123"
)

# Add a message event
message = trace.message("User: What's the weather?")
message.end("Bot: It's sunny!")
''',
    '''
message = trace.message("User input")
message.end("Bot response")
''',
    '''
tool = message.tool("Calling weather API")
tool.end("API response received")
''',
    '''
generation = message.generation("Generating response")
generation.end("Response generated")
''',
    '''
agent = message.agent("Planning next action")
agent.end("Decided to search database")
''',
    '''
retrieval = message.retrieval("Searching knowledge base")
retrieval.end("Found 3 relevant documents")
''',
    '''
system = trace.system("Initializing cache")
system.end("Cache warmed up")
''',
    '''
trace.feedback(
    feedback_tag="THUMBS_UP",
    feedback_text="User marked response as helpful"
)
''',
    '''
# Initialize trace with basic context
trace = client.trace(
    conversation_id="conv_123",
    metadata=Metadata(environment="production"),
    user=User(id="user_123")
)

try:
    # Start main conversation trace
    message = trace.message("User: Tell me about neural networks")
    
    # Track document retrieval
    retrieval = message.retrieval("Searching documentation")
    retrieval.end("Found 2 relevant articles")
    
    # Track response generation
    generation = message.generation("Creating explanation")
    generation.end("Generated response about neural networks")
    
    # Complete the conversation
    message.end("Bot: Neural networks are...")

except Exception as e:
    message.end(f"Error: {str(e)}")
''',
]


def test_every_page_example_runs(make_agent, clients):
    agent = make_agent("unix")
    client = clients(agent.endpoint)
    namespace = {"client": client, "Metadata": Metadata, "User": User}
    for code in PAGE_EXAMPLES:
        exec(compile(textwrap.dedent(code), "<page example>", "exec"), namespace)
    assert client.flush(2.0)
    # 2 trace messages, 10 events (start + end), 1 feedback.
    assert agent.collector.wait_count(23)
    msgs = agent.messages
    assert len(msgs) == 23 and client.stats()["dropped"] == 0
    starts = {m["id"]: m for m in msgs if m["kind"] == "start"}
    ends = {m["id"]: m for m in msgs if m["kind"] == "end"}
    assert starts.keys() == ends.keys() and len(starts) == 10
    first_trace, nested_trace = [m["trace_id"] for m in msgs if m["kind"] == "trace"]
    assert first_trace != nested_trace
    nested = [m for m in starts.values() if m["trace_id"] == nested_trace]
    root = [m for m in nested if "parent_id" not in m]
    assert len(root) == 1 and root[0]["input"] == "User: Tell me about neural networks"
    children = sorted(m["type"] for m in nested if m.get("parent_id") == root[0]["id"])
    assert children == ["GENERATION", "RETRIEVAL"]
    assert ends[root[0]["id"]]["output"] == "Bot: Neural networks are..."
    fb = [m for m in msgs if m["kind"] == "feedback"]
    assert fb[0]["tag"] == "THUMBS_UP" and fb[0]["trace_id"] == first_trace
    nested_ctx = [m for m in msgs if m["kind"] == "trace"][1]
    assert nested_ctx["metadata"] == {"environment": "production"}
    assert nested_ctx["user"] == {"id": "user_123"}


def test_examples_match_the_page_when_it_is_available():
    """When the page is checked out beside the repository, the copies above
    must still be its examples."""
    import os
    import re

    import pytest

    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        os.path.join(here, *[".."] * k, "shared", "seed", "tracing-sdk.md") for k in range(3, 6)
    ]
    page = next((p for p in candidates if os.path.exists(p)), None)
    if page is None:
        pytest.skip("tracing-sdk.md is not beside the repository")
    blocks = re.findall(r"```python\n(.*?)```", open(page).read(), re.S)
    assert [b.strip() for b in blocks] == [e.strip() for e in PAGE_EXAMPLES]
