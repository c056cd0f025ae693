"""A prompt that is a conversation: system, user and assistant messages, the response being the next assistant turn.

A prompt is a ``str`` (one user message for chat models, a text prefix otherwise; unchanged) or a
:class:`Conversation`. The diffusion LM renders a conversation with its tokenizer's chat template
(:meth:`entrgi.models.base.DiffusionLM.encode_prompt`) and the reward model with its own
(:meth:`entrgi.reward.base.RewardModel.render`), so the reward's context is the whole conversation. A model
without a chat template reads :meth:`Conversation.plain_text` instead: one user message is its text; longer
conversations are ``Role: content`` lines followed by ``Assistant:``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

#: The roles a message may have (OpenAI's ``developer`` is read as ``system``).
ROLES = ("system", "user", "assistant")


class Message(NamedTuple):
    """One turn: ``role`` (one of :data:`ROLES`) and its text."""

    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    """Messages in order, ending with a user message; hashable (reward models cache their layout per prompt)."""

    messages: tuple[Message, ...]

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("a conversation needs at least one message.")
        for i, m in enumerate(self.messages):
            if not isinstance(m, Message) or m.role not in ROLES or not isinstance(m.content, str):
                raise ValueError(f"message {i} must be a Message with a role in {list(ROLES)} and string content, "
                                 f"got {m!r}.")
        if self.messages[-1].role != "user":
            raise ValueError(f"the last message must be the user's (the response is the assistant's next turn), "
                             f"got {self.messages[-1].role!r}.")

    @classmethod
    def of(cls, messages: Iterable[Mapping[str, str] | Message]) -> Conversation:
        """A conversation from ``{"role": ..., "content": ...}`` mappings (or :class:`Message`)."""
        out = []
        for m in messages:
            if isinstance(m, Mapping):
                role = m.get("role")
                m = Message("system" if role == "developer" else role, m.get("content"))
            out.append(m)
        return cls(tuple(out))

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages as a chat template takes them."""
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def plain_text(self) -> str:
        """The text fallback for a model without a chat template: a lone user message is its text; otherwise
        one ``Role: content`` line per message, then ``Assistant:`` (the response follows it)."""
        if len(self.messages) == 1:
            return self.messages[0].content
        lines = [f"{m.role.capitalize()}: {m.content}" for m in self.messages]
        return "\n".join([*lines, "Assistant:"])

    def __str__(self) -> str:
        return self.plain_text()


#: What :func:`entrgi.generate` takes per prompt.
Prompt = str | Conversation


def prompt_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The chat messages of a prompt: a ``str`` is one user message."""
    return prompt.as_dicts() if isinstance(prompt, Conversation) else [{"role": "user", "content": prompt}]


def prompt_text(prompt: Prompt) -> str:
    """The plain text of a prompt: a ``str`` itself, a conversation's :meth:`~Conversation.plain_text`."""
    return prompt.plain_text() if isinstance(prompt, Conversation) else prompt


__all__ = ["ROLES", "Conversation", "Message", "Prompt", "prompt_messages", "prompt_text"]
