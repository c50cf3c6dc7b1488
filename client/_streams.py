"""DeploymentService's streams (WatchTargets, WatchEvents) and what serving processes report back
(ReportSidecarStatus, ReportMetrics), as `Registry` methods."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Sequence
from datetime import timedelta

from dspy_registry.v1 import deployment_pb2 as dpb

from . import _convert as convert
from ._base import ClientBase


class StreamMethods(ClientBase):
    async def watch_targets(
        self,
        program: str = "",
        environment: str = "",
        *,
        selectors: Sequence[tuple[str, str]] = (),
        start_revision: int = 0,
        sidecar_id: str = "",
        progress_interval: timedelta | float | None = None,
    ) -> AsyncGenerator[dpb.WatchTargetsResponse, None]:
        """Streams targets (WatchTargets): a snapshot (or the changes after `start_revision`), then
        each committed revision's changes, and progress messages when idle.

        The stream does not end by itself: leave the loop, or `aclose()` it, to end it.

        Args:
            program: The program, or a glob (`sentiment_*`); empty for every program.
            environment: The environment; empty for every environment.
            selectors: Several (program, environment) pairs instead of one.
            start_revision: Resume after this revision (0: a snapshot first).
            sidecar_id: The serving process's id, for a sidecar.
            progress_interval: How often an idle stream sends a progress message.

        Returns:
            An async generator of the messages, each with the store `revision` it brings the client to.

        Raises:
            InvalidArgumentError: A bad selector.
            AccessDeniedError: No read grant on every selected program (also mid-stream).
            ResourceExhaustedError: The watcher fell behind: watch again from the last revision seen.
        """
        request = dpb.WatchTargetsRequest(
            selectors=convert.selectors(program, environment, selectors),
            start_revision=start_revision,
            sidecar_id=sidecar_id,
            progress_interval=convert.duration(progress_interval),
        )
        async for message in self._stream(self._deployment_service.WatchTargets, request):
            yield message

    async def watch_events(
        self,
        program: str = "",
        environment: str = "",
        *,
        selectors: Sequence[tuple[str, str]] = (),
        start_revision: int = 0,
        kinds: Iterable[str | int] = (),
        progress_interval: timedelta | float | None = None,
    ) -> AsyncGenerator[dpb.WatchEventsResponse, None]:
        """Streams deployment events (WatchEvents): a snapshot of the live deployments, then each
        revision's events, as `watch_targets` does.

        Args:
            program: The program, or a glob; empty for every program.
            environment: The environment; empty for every environment.
            selectors: Several (program, environment) pairs instead of one.
            start_revision: Resume after this revision (0: a snapshot first).
            kinds: Only these event kinds ("succeeded", "rolled_back" ...).
            progress_interval: How often an idle stream sends a progress message.

        Returns:
            An async generator of the messages.

        Raises:
            InvalidArgumentError: A bad selector or kind.
            AccessDeniedError: No read grant on every selected program (also mid-stream).
            ResourceExhaustedError: The watcher fell behind: watch again from the last revision seen.
        """
        request = dpb.WatchEventsRequest(
            selectors=convert.selectors(program, environment, selectors),
            start_revision=start_revision,
            kinds=convert.enums(dpb.DeploymentEventKind, "DEPLOYMENT_EVENT_KIND_", kinds),  # type: ignore[arg-type]
            progress_interval=convert.duration(progress_interval),
        )
        async for message in self._stream(self._deployment_service.WatchEvents, request):
            yield message

    # -- sidecar reports (client/watcher.py sends these for a serving process)

    async def report_sidecar_status(
        self,
        sidecar_id: str,
        *,
        targets: Iterable[dpb.SidecarTargetStatus] = (),
        revision: int = 0,
        heartbeat_interval: timedelta | float | None = None,
        leaving: bool = False,
    ) -> dpb.ReportSidecarStatusResponse:
        """Records what a serving process has applied per target, and is its heartbeat
        (ReportSidecarStatus); the report replaces its last one.

        Args:
            sidecar_id: The serving process's id (a pod name).
            targets: Per target, the version applied: ACK, or NACK with the error.
            revision: The last revision the process has seen.
            heartbeat_interval: How often it will report.
            leaving: The process is stopping: forget it now.

        Returns:
            The response: `.heartbeat_interval` the server expects, and its current `.revision`.

        Raises:
            InvalidArgumentError: A missing sidecar id or a bad entry.
            NotFoundError: A named program or environment does not exist.
            AccessDeniedError: No read grant on a named program, or the id is a live sidecar
                another principal reported.
        """
        return await self._call(
            self._deployment_service.ReportSidecarStatus,
            dpb.ReportSidecarStatusRequest(
                sidecar_id=sidecar_id,
                targets=list(targets),
                revision=revision,
                heartbeat_interval=convert.duration(heartbeat_interval),
                leaving=leaving,
            ),
            dpb.ReportSidecarStatusResponse,
        )

    async def report_metrics(
        self, sidecar_id: str, *, windows: Iterable[dpb.MetricWindow]
    ) -> dpb.ReportMetricsResponse:
        """Records metric windows a serving process measured (ReportMetrics); the registry's analysis
        judges canaries on them.

        Args:
            sidecar_id: The serving process's id.
            windows: The windows: per version, requests, errors, a latency histogram, feedback.

        Returns:
            The response: `.accepted_count` windows stored, `.dropped_count` ignored.

        Raises:
            InvalidArgumentError: A bad window (end before start, errors above requests ...), or one
                dated more than 5 minutes ahead of the server's clock.
            NotFoundError: A window's version does not exist.
            ResourceExhaustedError: More windows than one call takes.
        """
        return await self._call(
            self._deployment_service.ReportMetrics,
            dpb.ReportMetricsRequest(sidecar_id=sidecar_id, windows=list(windows)),
            dpb.ReportMetricsResponse,
        )
