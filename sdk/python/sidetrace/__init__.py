"""sidetrace: emit LLM application traces to the local sidetrace agent.

    from sidetrace import Client, Metadata, User

    client = Client()  # $SIDETRACE_ENDPOINT, else unix:///run/sidetrace/agent.sock
    trace = client.trace(conversation_id="conv_123", user=User(id="user_123"))
    message = trace.message("User: What's the weather?")
    message.end("Bot: It's sunny!")

Nothing here blocks the application on the network or raises into it, even
given arguments of the wrong type (they are converted or left out, and
counted); see Client.stats() for what was dropped.
"""

from ._client import PROTOCOL_VERSION, Client, Event, Metadata, Trace, User
from ._transport import DEFAULT_ENDPOINT

__all__ = ["Client", "Trace", "Event", "Metadata", "User", "DEFAULT_ENDPOINT", "PROTOCOL_VERSION"]
__version__ = "0.1.0"
