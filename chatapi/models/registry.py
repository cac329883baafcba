"""Served model names: one local model, reachable by its own id and by OpenAI-style aliases."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

DEFAULT_ALIASES: tuple[str, ...] = ("gpt-3.5-turbo", "gpt-4", "gpt-4o", "gpt-4o-mini")

_MAX_NAME_IN_MESSAGE = 200


class ModelNotFoundError(LookupError):
    """A request named a model that this server does not serve."""

    def __init__(self, model: str) -> None:
        self.model = model
        # the name comes from the client: bound what is echoed back
        shown = model if len(model) <= _MAX_NAME_IN_MESSAGE else model[:_MAX_NAME_IN_MESSAGE] + "…"
        super().__init__(f"The model `{shown}` does not exist")


class ModelRegistry:
    """Maps requested model names (the id or any alias) to the one served model id."""

    def __init__(
        self,
        model_id: str,
        aliases: Sequence[str] = (),
        created: int | None = None,
        owned_by: str = "chatapi",
    ) -> None:
        if not model_id:
            raise ValueError("model_id must be a non-empty string")
        if any(not alias for alias in aliases):
            raise ValueError("model aliases must be non-empty strings")
        self.model_id = model_id
        # dict keeps the given order and drops duplicates and the id itself
        self.aliases: tuple[str, ...] = tuple(dict.fromkeys(a for a in aliases if a != model_id))
        self.created = int(time.time()) if created is None else created
        self.owned_by = owned_by

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a request may use: the model id first, then the aliases."""
        return (self.model_id, *self.aliases)

    def __contains__(self, name: object) -> bool:
        return name == self.model_id or name in self.aliases

    def resolve(self, name: str) -> str:
        """Return the served model id for ``name``; raise ModelNotFoundError if it is unknown."""
        if name not in self:
            raise ModelNotFoundError(name)
        return self.model_id

    def get_model(self, name: str) -> dict[str, Any]:
        """The OpenAI ``Model`` object for ``name``, listed under the name that was asked for."""
        if name not in self:
            raise ModelNotFoundError(name)
        return self._model_object(name)

    def list_models(self) -> list[dict[str, Any]]:
        """OpenAI ``Model`` objects for the id and each alias, so clients find the name they use."""
        return [self._model_object(name) for name in self.names]

    def _model_object(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": self.owned_by}
