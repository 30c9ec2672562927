"""io.l5d.k8s when the API server lists but refuses to watch (a role granting get and list, not watch).

The lists succeed and the watches are refused, cycle after cycle. Each name is served from the last
list and stays ``stale`` with the watch's refusal as its error for as long as the watches are refused:
it does not flip to ``bound`` at every list and back at every refused watch (which made ``hostproxy
wtf`` and the namer state tell a different story from one second to the next), and a change made in
the cluster still arrives with the next list. Once a watch streams again the name is ``bound``.
"""

from __future__ import annotations

import json

from k8s_api.objects import endpoints
from k8s_api.server import open_fake_api
from test_namer_k8s import KEY, SESSIONS_SVC, hosts, lookup, name_json, running, state, wait_for
from test_namer_k8s_core import core, lst

FORBIDDEN_WATCH = json.dumps(
    {
        "kind": "Status",
        "message": 'endpoints is forbidden: User "x" cannot watch resource "endpoints"',
        "code": 403,
    }
).encode()


def test_core_keeps_a_refused_watch_as_its_own_state_across_lists():
    c = core()
    auth = endpoints("auth", ["10.244.1.21"])
    assert c.on_list(200, lst("100", auth)) and c.error is None
    assert c.next_request()[0] == "watch"
    # the refusal is recorded, but the objects of the list just made are not in doubt
    assert c.on_watch_status(403, FORBIDDEN_WATCH)
    assert c.error is None and c.failures == 1
    assert c.watch_refused == (
        'GET endpoints in srv (metadata.name=auth): HTTP 403: endpoints is forbidden: User "x" cannot watch '
        'resource "endpoints"; grant the service account get, list and watch on this resource (RBAC)'
    )
    assert c.next_request()[0] == "list"
    # a list that succeeds neither clears the refusal nor reports a change when nothing changed
    assert not c.on_list(200, lst("101", auth))
    assert c.watch_refused is not None and c.error is None
    # the same refusal again is no change; objects that changed in the cluster are
    assert not c.on_watch_status(403, FORBIDDEN_WATCH) and c.failures == 2
    assert c.on_list(200, lst("102", endpoints("auth", ["10.244.1.22"])))
    assert c.watch_json(str)["watchRefused"] == c.watch_refused
    # a watch that streams ends it
    c.next_request()
    assert c.on_stream_start() and c.watch_refused is None
    assert not c.on_stream_start()


async def test_a_name_stays_stale_while_watches_are_refused_and_gets_the_lists_changes():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        api.forbid("endpoints", "watch")
        async with running(api) as namer:
            seen: list[str | None] = []
            namer.subscribe(lambda n, p: seen.append(state(namer)))
            lookup(namer, "/srv/http/sessions")
            await wait_for(lambda: state(namer) == "stale")
            assert hosts(namer) == [("10.244.1.17", 8080)]
            error = namer.table.get(KEY).last_error
            assert error.startswith("discovery degraded: the watch was refused (GET endpoints in srv"), error
            assert "cannot watch" in error and "RBAC" in error, error
            assert "changes arrive with a re-list" in error, error
            assert name_json(namer)["watch"]["lastError"] is not None
            stale_since = namer.table.get(KEY).stale_since
            eps = namer.targets[next(iter(namer.targets))].eps
            lists = eps.lists
            await wait_for(lambda: eps.lists >= lists + 3)  # three more list + refused watch cycles
            assert state(namer) == "stale" and namer.table.get(KEY).stale_since == stale_since
            # a change in the cluster still arrives, with the next list
            api.put("endpoints", endpoints("sessions", ["10.244.1.18"]))
            await wait_for(lambda: hosts(namer) == [("10.244.1.18", 8080)])
            assert state(namer) == "stale"
            assert "bound" not in seen[seen.index("stale") :], seen
            # the role is fixed: the next watch streams and the name is bound again
            api.forbidden.clear()
            await wait_for(lambda: state(namer) == "bound")
            assert hosts(namer) == [("10.244.1.18", 8080)]
            assert namer.table.get(KEY).last_error is None
            assert name_json(namer)["watch"]["lastError"] is None
