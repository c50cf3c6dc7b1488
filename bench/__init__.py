"""Benchmarks for dspy-registry: `make bench` (= `python -m bench`).

Every figure is one JSON line on stdout. The server (or the echo server) and
the load generator always run in separate processes: the driver
(`bench.__main__`) starts the server as a subprocess, waits until its
grpc.health.v1 Check says SERVING, runs `python -m bench.loadgen` as another
subprocess (which prints one JSON result), then stops the server with SIGTERM.
Each measurement gets a fresh server and a fresh database (a temporary SQLite
file, or a throwaway PostgreSQL database that is dropped afterwards).

Authentication: every registry server runs with authentication on (the
server's default) unless a figure says otherwise, and is started with
``--admin-token-file <tmpdir>/admin.token`` (a temporary directory per
measurement; never the default ``.dspy-registry/admin.token``). The driver
waits for health SERVING (health needs no token), reads the admin token the
first start wrote, sends ``authorization: Bearer <token>`` on its preload
calls, and passes ``--token-file`` to the load generator, which sends the same
metadata on every call. ``DSPY_REGISTRY_NO_AUTH`` is removed from the
server's environment, so only ``--no-auth`` turns authentication off. Every
registry line carries ``"auth": true`` or ``"auth": false``.

The figures:

``echo`` (backend ``none``)
    The ceiling: a bare grpc.aio server with one generic handler,
    ``/bench.Echo/Echo``, that returns the request bytes unchanged (no
    protobuf parsing, no interceptor, no store). It runs on uvloop when
    uvloop is importable (``uvloop_server``). The load generator keeps 64
    calls in flight for ``--seconds``, sending the same bytes a
    GetProgramVersion request carries. This is what grpc.aio in Python
    can do on this machine with this client; the registry cannot beat it.

``get_program_version`` (backends ``sqlite``, ``postgres``)
    The read path: one program preloaded with versions 1.0.0, 1.1.0, 1.2.0
    and 1.3.0 (10 KB artifacts each), then 64 calls in flight of
    ``GetProgramVersion(name="programs/p/versions/1.2.0")`` for
    ``--seconds``. ``ratio_to_echo`` is its throughput divided by the echo
    ceiling measured in the same run (null with ``--only get``, which skips
    the echo run).
    Target (from the issue): ratio_to_echo >= 0.70 and p99 < 25 ms.

``get_program_version`` with ``"auth": false`` (backend ``sqlite`` only)
    The same read path on a server started with ``--no-auth`` (no token, no
    metadata), measured in the same run just before the auth-on SQLite
    figure, whenever the get figures run (``--only get`` or no ``--only``)
    and ``--backend`` includes sqlite (``sqlite`` or ``both``). It has no
    target of its own (``target``/``meets_target`` null). The auth-on SQLite
    line then gains ``ratio_to_no_auth`` (its throughput divided by this
    one's) with ``auth_target`` "ratio_to_no_auth >= 0.85" and
    ``meets_auth_target`` (from the issue: with auth on, GetProgramVersion
    keeps within 85% of its throughput with auth off); these are separate
    keys so that the verdict exists even under ``--only get``, where
    ``meets_target`` is null for want of the echo ceiling. With
    ``--backend postgres`` there is no auth-off figure and no
    ``ratio_to_no_auth``. The auth-on line is printed after the auth-off one.

``get_program_version_by_environment`` (backends ``sqlite``, ``postgres``)
    The serving path: the same preload (each version auto-deployed to
    ``development``, which so serves 1.3.0), then 64 calls in flight of
    ``GetProgramVersion(name="programs/p", environment="development")``.
    Printed after the auth-on ``get_program_version`` line of its backend.
    Target (from issue 19): ratio_to_echo >= 0.90.

``register_program`` (backends ``sqlite``, ``postgres``)
    The write path: 16 concurrent clients, each call registering a new
    explicit version 1.0.N of program ``p`` with a distinct 10 KB DSPy
    program-state artifact (so nothing is deduplicated), for ``--seconds``.
    Every acknowledged registration is durable (SQLite runs WAL with
    ``synchronous=FULL``; PostgreSQL commits). ``throughput_per_s`` is
    successful registrations per second.
    Target (from the issue): >= 1000 registrations/s on SQLite (no target
    on PostgreSQL). Each registration also auto-deploys to ``development``
    (the default environments): ``"auto_deploy": true``. On SQLite the same
    figure is printed first with ``"auto_deploy": false`` (the server started
    with a ``--config`` whose development does not auto-deploy; no target),
    so that the two are compared in one run.
    Then the versions are listed: ``gapless`` says that every version the
    clients sent (1.0.0 .. 1.0.N, none retried) is there, each at a revision
    of its own, and those revisions without a hole (``versions_missing``,
    ``versions_unexpected``, ``revisions_shared``, ``revision_holes`` count
    what is not); the SQLite target needs it too.

``create_deployment`` (backends ``sqlite``, ``postgres``)
    The deployment write path: program ``p`` preloaded with versions 1.0.0
    and 1.1.0 (same signature, 10 KB artifacts; registering each
    auto-deploys it to ``development``), then 16 concurrent clients, each
    call a ``CreateDeployment(program="p", environment="staging")`` with
    strategy ``STRATEGY_REPLACE``, for ``--seconds``. The version alternates
    1.0.0, 1.1.0, 1.0.0, ... call by call (one counter shared by every
    client), so every call moves the stable version (with 16 in flight the
    server may commit two calls in another order than they were sent, so now
    and then a deployment re-deploys the version already stable; it still
    succeeds and counts). ``staging`` validates
    (signature compatibility) but needs no approval, and a REPLACE
    deployment ends SUCCEEDED within the call, so no deployment is ever left
    in progress: concurrent calls to the one target serialize and none is
    refused. ``throughput_per_s`` is successful deployments per second; the
    line also carries ``environment``, ``strategy`` and ``versions``.
    No target (the issue sets none): ``target``/``meets_target`` null.

``get_deployment_status`` (backends ``sqlite``, ``postgres``)
    The deployment read path: the same preload plus one REPLACE deployment
    of 1.1.0 to ``staging`` (checked to have SUCCEEDED and to be what
    staging serves), then 64 calls in flight of
    ``GetDeploymentStatus(program="p", environment="staging")`` for
    ``--seconds``. No target (the issue sets none): ``target``/
    ``meets_target`` null.

The two deployment figures run last: per backend (SQLite first),
``create_deployment`` then ``get_deployment_status``, each on its own fresh
server and database (``--only deploy`` runs just these). They use the full
``--seconds`` window like every other figure.

Common keys: ``calls`` (completed calls, including failed ones),
``warmup_calls`` (calls made during the uncounted warm-up),
``fanout`` (backend ``sqlite``; ``--only fanout``, sizes ``--streams 1000,5000,10000``)
    Two ``python -m bench.watch_client`` processes (8 connections each;
    the same client ``make bench-peers`` runs against etcd, bench/peers.py)
    hold ``streams`` WatchTargets streams on ``p`` in staging, opened over
    ``--open-seconds`` (default 2; 0 is a reconnect storm). Every stream must
    get its snapshot or the run fails. Then 20 REPLACE deployments, one at a
    time: ``p50_ms`` / ``p99_ms`` run from CreateDeployment returning to the
    last stream receiving that revision (each client prints the time its
    last stream got it). ``server_kib_per_idle_stream`` is the server's RSS
    growth after opening the streams, divided by the streams;
    ``server_cpu_us_per_delivered_event`` is the server's CPU time over the
    20 deployments, divided by 20 x streams.
    Targets (from the issue): at 10 000 streams p50 <= 200 ms, p99 <= 400 ms,
    <= 32 KiB per idle stream; at 1 000 streams p99 <= 40 ms.

``errors`` (calls that ended with a non-OK status; ``error_codes`` counts
them by code), ``seconds`` (wall time of the measured window, until the last
in-flight call finished), ``throughput_per_s`` (successful calls / seconds),
``p50_ms`` / ``p99_ms`` (latency of completed calls as the client saw it),
``server_cpu_us_per_call`` (the server process's CPU time, utime + stime
from /proc, over the load generator's run divided by its calls, warm-up
included: on a machine shared with other work far steadier than the rate,
which moves with the load), ``concurrency``, ``channels``, ``uvloop_client``,
``server_log_level``,
``auth`` (registry lines only), and ``target`` / ``meets_target`` where the
issue sets one. A short warm-up (``--warmup``, 1 s by default) precedes every
measured window and is not counted.

Flags: ``--seconds N`` (default 10), ``--only echo|get|register|deploy|fanout``,
``--backend sqlite|postgres|both`` (default both), ``--server-log-level``
(default ``info``, the server's own default, so per-RPC log lines are part
of the cost; use ``warning`` to leave them out), ``--postgres``
(the server URL, without a database name). With the defaults the whole run
(fourteen figures) takes about 3 minutes.
"""
