"""Chat completions, end to end: ``ChatService`` and the parts it is made of.

::

    service.py    ChatService: the entry points, arm choice, fallback, drain
    streaming.py  open a stream, relay its chunks into the row, write SSE events
    shadow.py     the challenger's unseen background answers
    ledger.py     the one inference row per request: opened, filled, finished, counted
    payloads.py   response JSON, headers and chunk events in OpenAI's shapes
    drain.py      shutdown's clock: every wait on a model ends at its deadline
"""

from router.completions.service import ChatService, ForcedArm

__all__ = ["ChatService", "ForcedArm"]
