"""What the HTTP front ends (:mod:`dicomweb`, :mod:`pacs.api`, :mod:`pacs.ui`) share: the
services they are given (:mod:`pacs.http.context`), the one error table
(:mod:`pacs.http.errors`), the middleware every answer passes (:mod:`pacs.http.security`)
and the listener (:mod:`pacs.http.server`). The application that puts them together is
:mod:`pacs.web`."""
