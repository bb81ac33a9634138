"""What the node stores for what a client sent, where tests of several clients agree."""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]  # an event as ``events export`` writes it


def llm_properties(prompt: Row, generation: Row, sent: dict[str, Any], kept: Row) -> list[Row]:
    """The properties of an LLM event's Prompt and Generation rows: from ``sent``'s
    ``prompt``, ``generation``, ``assistant_id`` and ``latency``, the two linked by their
    ids, each with ``kept`` (the properties the client's event carried)."""
    return [
        {"$text": sent["prompt"], "$generation_id": generation["id"], **kept},
        {
            "$text": sent["generation"],
            "$assistant_id": sent.get("assistant_id"),
            "$prompt": sent["prompt"],
            "latency(s)": sent.get("latency"),
            "$prompt_id": prompt["id"],
            **kept,
        },
    ]
