"""The listening process counts the connections it hands to workers until they report them
closed, or until the worker's channel closes (it stopped or died)."""

from __future__ import annotations

import socket
import threading

from pacs.dimse import handoff
from pacs.dimse.guard import ConnectionCount
from tests.support.wait import until


def test_a_worker_reports_closed_connections_and_a_dead_worker_releases_the_rest() -> None:
    count = ConnectionCount(limit=2)
    listener_end, worker_end = handoff.channel_pair()
    dispatcher = handoff.Dispatcher([listener_end])
    dispatcher.start(count.release)
    adopted: list[tuple[socket.socket, tuple[str, int]]] = []
    worker = threading.Thread(target=handoff.receive_forever,
                              args=(worker_end, lambda c, a, _tls: adopted.append((c, a))))
    worker.start()
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        handed = []
        for number in range(2):
            assert count.admit("127.0.0.2")
            # round robin: this process first, then the worker
            handed.append(dispatcher.hand_off(pairs[number][0], ("127.0.0.2", 1000 + number)))
        assert handed == [False, True]
        assert not count.admit("127.0.0.2")  # over the limit
        until("the worker adopted one", lambda: len(adopted) == 1, 10)
        assert adopted[0][1] == ("127.0.0.2", 1001)

        handoff.report_closed(worker_end, "127.0.0.2")
        until("the worker's connection released", lambda: count.open("127.0.0.2") == 1, 10)
        count.release("127.0.0.2")  # the one served here closes
        until("nothing counted", lambda: count.open("127.0.0.2") == 0, 10)

        assert count.admit("127.0.0.2")
        assert not dispatcher.hand_off(pairs[2][0], ("127.0.0.2", 9))  # served here: released
        count.release("127.0.0.2")
        assert count.admit("127.0.0.2") and dispatcher.hand_off(pairs[2][0], ("127.0.0.2", 9))
        until("the worker adopted another", lambda: len(adopted) == 2, 10)
        assert count.open("127.0.0.2") == 1
        handoff.stop(worker_end)  # the worker dies holding it (its end closes)
        until("its connection released", lambda: count.open("127.0.0.2") == 0, 10)
    finally:
        handoff.stop(listener_end)
        worker.join(10)
        worker_end.close()
        for connection, _ in adopted:
            connection.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_a_connection_to_the_tls_port_is_handed_off_raw_and_marked() -> None:
    """The worker wraps it (DICOM TLS handshakes where the association is served)."""
    listener_end, worker_end = handoff.channel_pair()
    dispatcher = handoff.Dispatcher([listener_end])
    adopted: list[tuple[tuple[str, int], bool]] = []
    worker = threading.Thread(target=handoff.receive_forever,
                              args=(worker_end, lambda c, a, tls: (adopted.append((a, tls)),
                                                                   c.close())))
    worker.start()
    ours, theirs = socket.socketpair()
    try:
        assert not dispatcher.hand_off(ours, ("127.0.0.1", 1), tls=True)  # this process
        assert dispatcher.hand_off(ours, ("127.0.0.1", 2), tls=True)
        assert not dispatcher.hand_off(ours, ("127.0.0.1", 3))
        assert dispatcher.hand_off(ours, ("127.0.0.1", 4))
        until("the worker adopted both", lambda: len(adopted) == 2, 10)
        assert adopted == [(("127.0.0.1", 2), True), (("127.0.0.1", 4), False)]
    finally:
        handoff.stop(listener_end)
        worker.join(10)
        worker_end.close()
        ours.close()
        theirs.close()
