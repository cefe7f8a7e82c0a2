"""The service's contract, as its OpenAPI document publishes it: the body of every answer (pydantic models with
exactly the declared fields) and what each refusal means. ``app.py`` attaches them to the routes; clients and
the contract fuzzer read them from ``/openapi.json``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from tailor.models.kinds import OUTPUTS


class Answer(BaseModel):
    """A response body with exactly the declared fields: an undeclared one is a 500, not a silent addition."""
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Answer):
    """Every refusal: one line that says what is wrong and what to do."""
    error: str = Field(description="what is wrong, naming the file or field at fault")


class Score(Answer):
    label: str
    score: float = Field(ge=0, le=1, description="the probability")


class TopCategories(Answer):
    """One image's categories (a classifier run)."""
    file: str
    top: list[Score]


class AttributeCategories(Answer):
    """One image's values of every attribute (a multi-attribute run)."""
    file: str
    attributes: dict[str, list[Score]]


class Predictions(Answer):
    run: str
    predictions: list[TopCategories | AttributeCategories]


class Neighbour(Answer):
    id: str
    label: str
    colour: str | None = Field(description="the catalog's colour name, when the index holds colours")
    score: float = Field(description="the look-alike score, higher first")
    distance: float = Field(description="between the unit embeddings")
    image_url: str = Field(description="the product's thumbnail (GET)")


class Neighbours(Answer):
    file: str
    neighbours: list[Neighbour]


class Similar(Answer):
    run: str
    results: list[Neighbours]


class ClassifierClasses(Answer):
    """A classifier's categories: trained, enrolled from images, and carried by name."""
    trained: list[str]
    enrolled: list[str]
    by_name: list[str]


class AttributeClasses(Answer):
    """A multi-attribute run's values, by attribute."""
    attributes: dict[str, list[str]]


class SearchClasses(Answer):
    """A metric-learning run's catalog labels (it enrolls nothing)."""
    trained: list[str]
    enrolled: list[str]


class Limits(Answer):
    max_images: int
    max_request_bytes: int
    max_pixels: int
    queue_limit: int


class Health(Answer):
    status: Literal["ok"]
    run: str
    model: Literal[OUTPUTS]  # type: ignore[valid-type]
    similar: bool
    enroll: bool
    device: str
    # present only with a catalog index: not nullable, no default in the schema (the route leaves it out)
    catalog_products: int | SkipJsonSchema[None] = Field(None, json_schema_extra=lambda s: s.pop("default"))
    queue: dict[str, int] = Field(description="images waiting, by model")
    limits: Limits
    writes: Literal["token", "open on loopback", "refused"]


class Enrolled(Answer):
    enrolled: str
    images: int
    classes: ClassifierClasses


class Removed(Answer):
    removed: str
    classes: ClassifierClasses


#: what each refusal means, for the document (a route's own wording may replace one)
REFUSALS: dict[int, str] = {
    400: "the upload cannot be used (an empty file, a form that cannot be parsed)",
    401: "this route needs the server's token: `Authorization: Bearer <token>`",
    403: "writes are refused: this server listens beyond loopback without a token",
    404: "not here",
    409: "the name conflicts with a category the run has",
    413: "too much: a body over the size limit, too many images, or an image with too many pixels",
    415: "a file is not an image that can be decoded",
    422: "a parameter or form field is missing or out of range",
    503: "the model's queue is full: retry after `Retry-After` seconds",
}

#: headers a refusal always carries
REFUSAL_HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {"WWW-Authenticate": {"description": "the scheme to authenticate with", "required": True,
                               "schema": {"type": "string", "const": "Bearer"}}},
    503: {"Retry-After": {"description": "seconds to wait before trying again", "required": True,
                          "schema": {"type": "integer", "minimum": 1}}},
}


def refusals(*statuses: int, said: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that refuses with ``statuses``; ``said``: the route's own wording of some.
    Declaring 422 also keeps FastAPI from adding its own, whose body is not ours."""
    said = said or {}
    return {status: {"model": ErrorBody, "description": said.get(status, REFUSALS[status]),
                     **({"headers": REFUSAL_HEADERS[status]} if status in REFUSAL_HEADERS else {})}
            for status in statuses}
