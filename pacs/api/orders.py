"""Imaging orders over REST under ``/api/orders`` (:mod:`pacs.services.orders`): a RIS
creates, changes and cancels the orders a Modality Worklist will offer, in DICOM keywords.

- ``POST /api/orders`` → 201 with the order (its ``id``, ``status``, every keyword, the
  identifiers made for it); ``GET /api/orders`` (filters: ``status``, ``patient_id`` and
  ``patient_name`` prefixes, ``accession_number``, ``date_from`` / ``date_to`` on the steps'
  start dates, ``limit`` / ``offset``), ``GET /api/orders/{id}``;
  ``PATCH /api/orders/{id}`` changes the keywords given; ``DELETE /api/orders/{id}`` cancels
  (200 with the cancelled order; cancelling again answers the same, idempotent).
- Roles: every route needs ``qa``. An order names a patient and the study to come, which
  the QA role reviews; ``qa`` is the narrowest role that may change such data (``admin``
  would also let a RIS account make tokens and purge studies).
- Errors are ``{"error": ...}`` naming the keyword: 400 for a value DICOM would refuse or an
  unknown keyword, 404 for an unknown order, 409 for an AccessionNumber or StudyInstanceUID
  another order has, or a change to a cancelled order. Bodies are bounded (1 MiB,
  :class:`pacs.http.security.BodyLimit`; at most ``MAX_STEPS`` steps), and, like every state
  change under ``/api``, a browser's cross-site request is refused
  (:class:`pacs.http.security.CrossSiteGuard`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from pacs.api.order_models import OrderIn, OrderOut, order_out
from pacs.http.auth import Who, requires
from pacs.http.context import WebDep
from pacs.http.errors import HttpError
from pacs.services.auth import Role
from pacs.services.orders import OrderFilter, OrderService

router = APIRouter(prefix="/api", tags=["Imaging orders"])


async def _orders(web: WebDep) -> OrderService:
    if web.orders is None:
        raise HttpError(503, "imaging orders are not served here")
    return web.orders


Orders = Annotated[OrderService, Depends(_orders)]


def _body(order: OrderIn) -> dict[str, object]:
    return order.model_dump(exclude_unset=True)


@router.post("/orders", status_code=201, summary="Create an imaging order with its steps",
             dependencies=[requires(Role.QA)])
def create_order(orders: Orders, who: Who, body: OrderIn) -> OrderOut:
    return order_out(orders.create(_body(body), who, source="rest"))


@router.get("/orders", summary="Imaging orders, newest first",
            dependencies=[requires(Role.QA)])
def list_orders(
    orders: Orders,
    status: str | None = Query(default=None, max_length=16),
    patient_id: str | None = Query(default=None, max_length=64,
                                   description="prefix (* is a wildcard)"),
    patient_name: str | None = Query(default=None, max_length=324,
                                     description="prefix, ignoring case and accents"),
    accession_number: str | None = Query(default=None, max_length=16),
    date_from: str | None = Query(default=None, description="YYYYMMDD: a step starts then "
                                  "or later"),
    date_to: str | None = Query(default=None, description="YYYYMMDD: a step starts then or "
                                "earlier"),
    limit: int = Query(default=100, ge=1, le=1000), offset: int = Query(default=0, ge=0),
) -> list[OrderOut]:
    criteria = OrderFilter(status=status, patient_id=patient_id, patient_name=patient_name,
                           accession_number=accession_number, date_from=date_from,
                           date_to=date_to, limit=limit, offset=offset)
    return [order_out(order) for order in orders.list(criteria)]


@router.get("/orders/{order_id}", summary="One imaging order",
            dependencies=[requires(Role.QA)])
def get_order(orders: Orders, order_id: int) -> OrderOut:
    return order_out(orders.get(order_id))


@router.patch("/orders/{order_id}", summary="Change an order's keywords and steps",
              dependencies=[requires(Role.QA)])
def update_order(orders: Orders, who: Who, order_id: int, body: OrderIn) -> OrderOut:
    return order_out(orders.update(order_id, _body(body), who))


@router.delete("/orders/{order_id}", summary="Cancel an order (idempotent)",
               dependencies=[requires(Role.QA)])
def cancel_order(orders: Orders, who: Who, order_id: int) -> OrderOut:
    return order_out(orders.cancel(order_id, who))
