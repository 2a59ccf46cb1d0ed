"""HL7 v2 over MLLP, a front end of its own: a RIS sends imaging orders (ORM^O01, OMI^O23)
and gets an acknowledgement (ACK with MSA-1 AA, AE or AR). :mod:`pacs.hl7.mllp` frames and
bounds the connections, :mod:`pacs.hl7.orders` maps one message to one call of
:class:`pacs.services.orders.OrderService`, :mod:`pacs.hl7.ack` writes the answer."""
