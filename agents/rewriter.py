"""The rewriter: fold answers into the query within the text encoder's token budget.

The user's own words are never cut silently: they always come first and whole; facts are added
only while they fit. If the user's words alone exceed the budget, the rewriter says which part the
encoder will not see (``truncated``), and the trace records it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from tools.mllm.base import Answer


@dataclass
class Rewrite:
    text: str
    added: list[str]  # slots whose facts made it into the text
    truncated: str  # the tail of the user's words the encoder will not see ('' if none)


@dataclass
class Rewriter:
    merge: Callable[..., str]  # MLLM.merge(query, facts, budget, count_tokens)
    count_tokens: Callable[[str], int]
    budget: int
    truncated_part: Callable[[str], str] | None = None

    def __call__(self, query: str, facts: Sequence[Answer]) -> Rewrite:
        facts = [f for f in facts if f.value is not None]
        truncated = self.truncated_part(query) if self.truncated_part else ""
        if truncated or not facts:
            return Rewrite(query, [], truncated)
        text = self.merge(query, facts, self.budget, self.count_tokens)
        if query.strip().rstrip(".") not in text:
            # a backend that paraphrased the user's words away: keep them, add facts ourselves
            from tools.mllm.base import grammar_merge

            text = grammar_merge(query, facts, self.budget, self.count_tokens)
        if self.count_tokens(text) > self.budget:
            from tools.mllm.base import grammar_merge

            text = grammar_merge(query, facts, self.budget, self.count_tokens)
        from tools.mllm.parser import parse

        said = parse(text).constraints
        # the parser reads no absences ("holds nothing"), so a fact also counts when its own sentence is there
        added = [f.slot for f in facts if said.get(f.slot) == f.value or f.sentence() in text]
        return Rewrite(text, added, "")
